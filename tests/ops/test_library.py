"""The fused ops as PyTorch custom operators: schemas and fake implementations checked by
torch.library.opcheck (CPU, Triton's interpreter, tiny shapes), and the fallback without the API."""

import os

import pytest
import torch

from cmath_fast.ops import _library

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_library = pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
# test_autograd_registration does not apply: autograd lives in the autograd.Functions around the
# operators (the low-overhead form), which the model and the functional API call.
OPCHECK_TESTS = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")


def _seed():
    return torch.tensor([1234], device=DEVICE, dtype=torch.int64)


def _cma_args(gates=True, dropout=0.2, joint=False):
    g = torch.Generator().manual_seed(0)
    S, B, L, H, dh = 2, 3, 5, 2, 16
    mk = lambda *s: torch.randn(*s, generator=g).to(DEVICE)
    q, kv = mk(B, L, H, dh), mk(S, B, L, 2, H, dh)
    gt = torch.rand(B, L, S, H, generator=g).to(DEVICE) if gates else None
    lens = torch.tensor([5, 0, 3], device=DEVICE, dtype=torch.int32)
    return q, kv[:, :, :, 0], kv[:, :, :, 1], gt, lens, lens.expand(S, B), _seed(), 0.25, dropout, joint


@needs_library
@pytest.mark.parametrize("gates, dropout, joint", [(True, 0.2, False), (False, 0.0, True)])
def test_opcheck_attention(gates, dropout, joint):
    q, k, v, gt, ql, kl, seed, scale, p, joint = _cma_args(gates, dropout, joint)
    torch.library.opcheck(torch.ops.cmath_fast.cma_fwd, (q, k, v, gt, ql, kl, seed, scale, p, joint, True),
                          test_utils=OPCHECK_TESTS)
    out, out_u, lse = torch.ops.cmath_fast.cma_fwd(q, k, v, gt, ql, kl, seed, scale, p, joint, True)
    dout = torch.randn_like(out)
    torch.library.opcheck(torch.ops.cmath_fast.cma_bwd,
                          (dout, q, k, v, out, out_u, lse, gt, ql, kl, seed, scale, p, joint),
                          test_utils=OPCHECK_TESTS)


@needs_library
def test_opcheck_attention_packed_rows():
    from cmath_fast.packing import pack_rows
    q, k, v, gt, ql, kl, seed, scale, p, joint = _cma_args(True, 0.2, False)
    rows = pack_rows(ql.cpu(), q.shape[1], rows=10).to(DEVICE)
    pk = lambda t, axis=0: t.flatten(axis, axis + 1).index_select(axis, rows.index).contiguous()
    q, k, v, gt = pk(q), pk(k, 1), pk(v, 1), pk(gt)
    starts = rows.starts_for(1)
    args = (q, k, v, gt, ql, kl, seed, scale, p, joint, True, starts, rows.max_len)
    torch.library.opcheck(torch.ops.cmath_fast.cma_fwd, args, test_utils=OPCHECK_TESTS)
    out, out_u, lse = torch.ops.cmath_fast.cma_fwd(*args)
    assert tuple(out.shape) == (10, k.shape[0]) + tuple(q.shape[-2:])  # (N, S, H, dh)
    torch.library.opcheck(torch.ops.cmath_fast.cma_bwd,
                          (torch.randn_like(out), q, k, v, out, out_u, lse, gt, ql, kl, seed, scale, p, joint,
                           starts, rows.max_len), test_utils=OPCHECK_TESTS)


@needs_library
@pytest.mark.parametrize("training, given_eps", [(True, False), (True, True), (False, False)])
def test_opcheck_fusion(training, given_eps):
    g = torch.Generator().manual_seed(1)
    N, d_in, d_z = 7, 16, 12
    e, w, b = (torch.randn(*s, generator=g).to(DEVICE) for s in ((N, d_in), (2 * d_z, d_in), (2 * d_z,)))
    eps = torch.randn(N, d_z, generator=g).to(DEVICE) if given_eps else None
    rows = torch.tensor([1, 1, 0, 1, 0, 1, 1], dtype=torch.bool, device=DEVICE)
    torch.library.opcheck(torch.ops.cmath_fast.vf_fwd, (e, w, b, eps, rows, _seed(), training, 10.0, True, True),
                          test_utils=OPCHECK_TESTS)
    z, kl, h, _ = torch.ops.cmath_fast.vf_fwd(e, w, b, eps, rows, _seed(), training, 10.0, False, True)
    torch.library.opcheck(torch.ops.cmath_fast.vf_bwd,
                          (h, torch.randn_like(z), torch.randn_like(kl), eps, rows, _seed(), training, 10.0,
                           torch.float32), test_utils=OPCHECK_TESTS)
    mu, lv = torch.randn(3, N, d_z, generator=g).to(DEVICE), torch.randn(3, N, d_z, generator=g).to(DEVICE)
    torch.library.opcheck(torch.ops.cmath_fast.poe_fwd, (mu, lv, eps, rows, _seed(), training, 10.0, True),
                          test_utils=OPCHECK_TESTS)
    torch.library.opcheck(torch.ops.cmath_fast.poe_bwd,
                          (mu, lv, torch.randn_like(z), torch.randn_like(kl), eps, rows, _seed(), training, 10.0),
                          test_utils=OPCHECK_TESTS)


def test_without_the_library_api_the_ops_still_run(monkeypatch):
    """torch < 2.4 (no register_fake): the status says why, and the ops run their plain
    implementations eagerly."""
    monkeypatch.delattr(torch.library, "register_fake", raising=False)
    ok, reason = _library.library_status()
    assert not ok and "register_fake" in reason and "torch.compile" in reason
    monkeypatch.setattr(_library, "_REGISTERED", False)
    from cmath_fast.ops import cross_modal_attention_packed
    q, k, v, gt, ql, _, _, _, _, _ = _cma_args()
    kv = torch.stack([k, v], dim=3)
    out = cross_modal_attention_packed(q, kv, ql.long(), gates=gt)
    assert out.shape == (3, 5, 2, 2, 16) and torch.isfinite(out).all()


def _column_major(t):
    """The same values with another layout (as Inductor may hand an operator under torch.compile)."""
    if t is None or t.dim() < 2:
        return t
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@needs_library
def test_operators_accept_any_layout():
    """The kernels address some inputs from their shapes; the operators must make those dense at
    run time, since a compiled graph may pass them laid out otherwise than the fakes promised."""
    q, k, v, gt, ql, kl, seed, scale, p, joint = _cma_args(dropout=0.0)
    fwd = torch.ops.cmath_fast.cma_fwd
    out, out_u, lse = fwd(q, k, v, gt, ql, kl, seed, scale, p, joint, True)
    out2, _, _ = fwd(q, k, v, _column_major(gt), ql, kl, seed, scale, p, joint, True)
    torch.testing.assert_close(out2, out)
    dout = torch.randn_like(out)
    bwd = torch.ops.cmath_fast.cma_bwd
    ref = bwd(dout, q, k, v, out, out_u, lse, gt, ql, kl, seed, scale, p, joint)
    got = bwd(_column_major(dout), q, k, v, out, out_u, lse, _column_major(gt), ql, kl, seed, scale, p, joint)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)

    g = torch.Generator().manual_seed(2)
    N, d_in, d_z = 9, 16, 12
    e, w, b = (torch.randn(*s, generator=g).to(DEVICE) for s in ((N, d_in), (2 * d_z, d_in), (2 * d_z,)))
    eps = torch.randn(N, d_z, generator=g).to(DEVICE)
    z, klv, h, _ = torch.ops.cmath_fast.vf_fwd(e, w, b, eps, None, None, True, 10.0, False, True)
    z2, _, _, _ = torch.ops.cmath_fast.vf_fwd(e, w, b, _column_major(eps), None, None, True, 10.0, False, True)
    torch.testing.assert_close(z2, z)
    dz, dkl = torch.randn_like(z), torch.randn_like(klv)
    ref = torch.ops.cmath_fast.vf_bwd(h, dz, dkl, eps, None, None, True, 10.0, torch.float32)
    got = torch.ops.cmath_fast.vf_bwd(_column_major(h), _column_major(dz), dkl, _column_major(eps), None, None,
                                      True, 10.0, torch.float32)
    torch.testing.assert_close(got, ref)
    mu, lv = torch.randn(3, N, d_z, generator=g).to(DEVICE), torch.randn(3, N, d_z, generator=g).to(DEVICE)
    ref = torch.ops.cmath_fast.poe_bwd(mu, lv, dz, dkl, eps, None, None, True, 10.0)
    got = torch.ops.cmath_fast.poe_bwd(_column_major(mu), _column_major(lv), _column_major(dz), dkl,
                                       _column_major(eps), None, None, True, 10.0)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)
