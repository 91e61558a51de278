"""The U-Nets' fused ends (``cmath_fast.ops.reconstruction``): the standardisation with the packed
rows' gather against the reference's ``(x - mean) / std`` masked, its gradient for features that
require one; L_rec from the last convolution's partial sums against the reference's per-modality
``mse_loss`` sums, and its gradient; opcheck of the three operators."""

import os

import pytest
import torch
import torch.nn.functional as F

from cmath_fast.ops import _library
from cmath_fast.ops.reconstruction import reconstruction_loss, standardise_rows
from cmath_fast.ops.row_conv import dialogue_rows, row_conv_groups
from cmath_fast.packing import pack_rows

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DIMS = (20, 7, 13)


def _features(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    lens = torch.tensor(lengths)
    mask = torch.arange(L)[None] < lens[:, None]
    xs = [torch.randn(B, L, D, generator=g) * 3 + 1 for D in DIMS]
    means = [torch.randn(D, generator=g) for D in DIMS]
    stds = [torch.rand(D, generator=g) + 0.5 for D in DIMS]
    return lens, mask, xs, means, stds


@pytest.mark.parametrize("packed", [False, True])
def test_standardise_matches_the_reference(packed):
    lens, mask, xs, means, stds = _features([5, 2, 4])
    B, L = mask.shape
    if packed:
        rows = pack_rows(lens, L, rows=14)  # 11 valid rows and 3 padding rows
        pos, ln, src = rows.pos, rows.lens, rows.index
    else:
        pos, ln = dialogue_rows(lens, L)
        src = None
    xd = [x.to(DEVICE).requires_grad_() for x in xs]
    out = standardise_rows([x.reshape(B * L, -1) for x in xd], [m.to(DEVICE) for m in means],
                           [s.to(DEVICE) for s in stds], pos.to(DEVICE), ln.to(DEVICE),
                           src.to(DEVICE) if src is not None else None)
    assert out.shape == (3, (14 if packed else B * L), 32)  # the widest group (20) padded to 16s
    valid = (pos < ln)
    for g, (x, m, s, D) in enumerate(zip(xs, means, stds, DIMS)):
        ref = ((x - m) / s * mask[..., None]).reshape(B * L, D)
        ref = ref[src] if packed else ref
        torch.testing.assert_close(out[g, :, :D].cpu(), ref * valid[:, None], atol=1e-6, rtol=1e-6)
        assert torch.count_nonzero(out[g, :, D:]) == 0
    # a gradient for features that require one: dy / std at the valid positions, scattered back
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    grads = torch.autograd.grad(out, xd, dy)
    for g, (x, s, D) in enumerate(zip(xs, stds, DIMS)):
        xr = x.clone().requires_grad_()
        ref = ((xr - means[g]) / s * mask[..., None]).reshape(B * L, D)
        ref = ref[src] if packed else ref
        (expect,) = torch.autograd.grad(ref, xr, dy[g, :, :D].cpu() * valid[:, None])
        torch.testing.assert_close(grads[g].cpu(), expect, atol=1e-6, rtol=1e-5)


def test_reconstruction_loss_matches_mse_sums():
    """L_rec = sum_g mse_sum(x_hat_g, x_std_g) / (n D_g) over valid rows, and its gradient."""
    lens, mask, xs, means, stds = _features([6, 1, 3], seed=2)
    B, L = mask.shape
    pos, ln = (t.to(DEVICE) for t in dialogue_rows(lens, L))
    x_std = standardise_rows([x.reshape(B * L, -1).to(DEVICE) for x in xs], [m.to(DEVICE) for m in means],
                             [s.to(DEVICE) for s in stds], pos, ln)
    g = torch.Generator().manual_seed(3)
    ws = [(torch.randn(D, 8, 1, generator=g) * 0.3).to(DEVICE).requires_grad_() for D in DIMS]
    bs = [torch.randn(D, generator=g).to(DEVICE).requires_grad_() for D in DIMS]
    u = torch.randn(3, B * L, 8, generator=g).to(DEVICE)
    x_hat, part = row_conv_groups(u, ws, bs, pos, ln, ref=x_std)
    rec = reconstruction_loss(x_hat, x_std, part, pos, ln, DIMS)
    gw = torch.autograd.grad(rec, ws + bs)
    # the reference: each modality's x_hat (padding rows zero) against x_std, mse sums over n D
    n = mask.sum()
    wr = [w.detach().cpu().requires_grad_() for w in ws]
    br = [b.detach().cpu().requires_grad_() for b in bs]
    expect = 0.0
    for i, D in enumerate(DIMS):
        xh = (u[i].cpu() @ wr[i][:, :, 0].T + br[i]) * mask.reshape(-1, 1)
        expect = expect + F.mse_loss(xh, x_std[i, :, :D].cpu(), reduction="sum") / (n * D)
    torch.testing.assert_close(rec.cpu(), expect.detach(), atol=1e-5, rtol=1e-5)
    for o, r in zip(gw, torch.autograd.grad(expect, wr + br)):
        torch.testing.assert_close(o.cpu(), r, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
def test_opcheck():
    from tests.ops.test_library import OPCHECK_TESTS
    lens, mask, xs, means, stds = _features([4, 2])
    rows = pack_rows(lens, mask.shape[1], rows=8)
    pos, ln, src = rows.pos.to(DEVICE), rows.lens.to(DEVICE), rows.index.to(DEVICE)
    flat = [x.reshape(-1, x.shape[-1]).to(DEVICE) for x in xs]
    args = (flat, [m.to(DEVICE) for m in means], [s.to(DEVICE) for s in stds], src, pos, ln, torch.float32)
    torch.library.opcheck(torch.ops.cmath_fast.standardise, args, test_utils=OPCHECK_TESTS)
    part = torch.rand(3, 2, 2, device=DEVICE)
    torch.library.opcheck(torch.ops.cmath_fast.rec_total, (part, pos, ln), test_utils=OPCHECK_TESTS)
    x_hat, ref = torch.randn(3, 8, 20, device=DEVICE), torch.randn(3, 8, 20, device=DEVICE)
    grec, nv = torch.ones((), device=DEVICE), torch.full((), 6.0, device=DEVICE)
    torch.library.opcheck(torch.ops.cmath_fast.rec_bwd, (x_hat, ref, grec, nv, pos, ln, list(DIMS)),
                          test_utils=OPCHECK_TESTS)
