"""The fused loss (``cmath_fast.ops.loss.cmath_loss_fused``) against the reference
``cmath_fast.losses.cmath_loss``: the total, every term and every gradient (logits, fine logits,
fine features, per-row KL, reconstruction loss), with and without class weights, one and three
fine heads, K odd and even, two temperatures, tau^2 on and off, with and without gradient into the
teacher, the KL weight from the schedule or a device tensor; padded rows holding anything; bf16
inputs; opcheck of both operators."""

import dataclasses
import os
from types import SimpleNamespace

import pytest
import torch

from cmath_fast.config import CMATHConfig
from cmath_fast.losses import StackedDict, cmath_loss
from cmath_fast.ops import _library
from cmath_fast.ops.loss import cmath_loss_fused

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _out(C, B, L, K, d, seed=0, dtype=torch.float32, device="cpu"):
    """A forward output's loss inputs (leaves that require grad) with garbage at padded rows."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    lengths[0] = L
    mask = torch.arange(L)[None, :] < lengths[:, None]
    labels = torch.randint(0, K, (B, L), generator=g)
    labels[~mask] = -1  # padded labels may be anything
    leaves = dict(
        logits=torch.randn(B, L, K, generator=g) * 3, fine_logits=torch.randn(C, B, L, K, generator=g) * 3,
        fine=torch.randn(C, B, L, d, generator=g), kl=torch.rand(B, L, generator=g) * 2,
        rec=torch.rand((), generator=g))
    coarse = torch.randn(B, L, d, generator=g) + 0.3 * leaves["fine"][0]
    leaves = {k: v.to(device, dtype if k != "kl" and k != "rec" else torch.float32).requires_grad_()
              for k, v in leaves.items()}
    names = ["t", "a", "v"][:C]
    out = SimpleNamespace(
        logits=leaves["logits"], fine_logits=StackedDict(names, leaves["fine_logits"]),
        fine=StackedDict(names, leaves["fine"]), coarse=coarse.to(device, dtype), mask=mask.to(device),
        kl=leaves["kl"], rec_loss=leaves["rec"])
    out.kl_loss = (out.kl * out.mask).sum() / out.mask.sum()
    return out, labels.to(device), leaves


def _run(loss_fn, cfg, out, labels, leaves, cw, **kw):
    total, terms = loss_fn(cfg, out, labels, cw, **kw)
    grads = torch.autograd.grad(total, list(leaves.values()), allow_unused=True)
    return total, terms, dict(zip(leaves, grads))


CASES = [
    dict(C=3, K=6, tau=1.0, tau_squared=True, detach_teacher=True, weights=False),
    dict(C=3, K=7, tau=8.0, tau_squared=True, detach_teacher=False, weights=True),
    dict(C=1, K=2, tau=2.0, tau_squared=False, detach_teacher=False, weights=False),
    dict(C=3, K=6, tau=1.0, tau_squared=False, detach_teacher=True, weights=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
@pytest.mark.parametrize("beta", ["epoch", "tensor"])
def test_matches_the_reference_loss(case, beta):
    centrals = ("t", "a", "v")[:case["C"]]
    cfg = dataclasses.replace(CMATHConfig.tiny(), centrals=centrals, num_classes=case["K"], tau=case["tau"],
                              tau_squared=case["tau_squared"], detach_teacher=case["detach_teacher"],
                              gamma_fine=0.7, gamma_kd=0.5, gamma_feat=0.3, lambda_rec=0.2)
    g = torch.Generator().manual_seed(1)
    cw = torch.rand(case["K"], generator=g) + 0.5 if case["weights"] else None
    kw = dict(epoch=3) if beta == "epoch" else {}
    ref_out, labels, ref_leaves = _out(case["C"], 4, 9, case["K"], 40)
    out, labels_d, leaves = _out(case["C"], 4, 9, case["K"], 40, device=DEVICE)
    if beta == "tensor":
        ref_kw = dict(beta=torch.tensor(0.37))
        kw = dict(beta=torch.tensor(0.37, device=DEVICE))
    else:
        ref_kw = kw
    ref = _run(cmath_loss, cfg, ref_out, labels, ref_leaves, cw, **ref_kw)
    got = _run(cmath_loss_fused, cfg, out, labels_d, leaves, cw.to(DEVICE) if cw is not None else None, **kw)
    torch.testing.assert_close(got[0].cpu(), ref[0].detach(), atol=1e-5, rtol=1e-5)
    assert set(got[1]) == set(ref[1])
    for name, value in ref[1].items():
        torch.testing.assert_close(got[1][name].cpu().float(), value.float(), atol=1e-5, rtol=1e-5, msg=name)
    for name, r in ref[2].items():
        o = got[2][name]
        if r is None:
            assert o is None or o.abs().max().item() == 0.0, name
            continue
        torch.testing.assert_close(o.cpu(), r, atol=1e-6, rtol=1e-4, msg=name)


def test_bf16_inputs_and_no_feature_term():
    cfg = dataclasses.replace(CMATHConfig.tiny(), gamma_feat=0.0)
    ref_out, labels, ref_leaves = _out(3, 3, 6, cfg.num_classes, 32, seed=2)
    out, labels_d, leaves = _out(3, 3, 6, cfg.num_classes, 32, seed=2, dtype=torch.bfloat16, device=DEVICE)
    ref = _run(cmath_loss, cfg, ref_out, labels, ref_leaves, None, epoch=None)
    got = _run(cmath_loss_fused, cfg, out, labels_d, leaves, None, epoch=None)
    assert got[0].dtype == torch.float32
    torch.testing.assert_close(got[0].cpu(), ref[0].detach(), atol=0.05, rtol=0.02)  # bf16 inputs
    assert got[2]["logits"].dtype == torch.bfloat16
    assert got[2]["fine"] is None  # gamma_feat 0: no gradient into the features from the loss


def test_padded_rows_change_nothing():
    cfg = CMATHConfig.tiny()
    out, labels, leaves = _out(3, 3, 6, cfg.num_classes, 32, seed=3, device=DEVICE)
    first = _run(cmath_loss_fused, cfg, out, labels, leaves, None)
    with torch.no_grad():
        pad = ~out.mask
        leaves["logits"][pad] = 1e4
        leaves["fine"][:, pad] = -7.0
        leaves["kl"][pad] = 1e6
    second = _run(cmath_loss_fused, cfg, out, labels, leaves, None)
    assert torch.equal(first[0], second[0])
    for name in ("logits", "fine_logits", "fine", "kl"):
        g = second[2][name]
        assert g[..., pad, :].abs().max().item() == 0.0 if g.dim() > 2 else g[pad].abs().max().item() == 0.0, name


def test_clear_error():
    cfg = CMATHConfig.tiny()
    out, labels, _ = _out(3, 2, 5, cfg.num_classes, 16)
    with pytest.raises(ValueError, match="disagree"):
        cmath_loss_fused(cfg, out, labels[:1], None)


@pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
def test_opcheck():
    from tests.ops.test_library import OPCHECK_TESTS
    g = torch.Generator().manual_seed(0)
    N, K, C, d = 10, 6, 3, 16
    z, f = torch.randn(N, K, generator=g), torch.randn(C, N, K, generator=g)
    fine, coarse = torch.randn(C, N, d, generator=g), torch.randn(N, d, generator=g)
    kl, rec = torch.rand(N, generator=g), torch.rand((), generator=g)
    y = torch.randint(0, K, (N,), generator=g)
    valid = torch.arange(N) < 7
    cw, beta = torch.rand(K, generator=g), torch.tensor(0.5)
    args = [t.to(DEVICE) for t in (z, f, fine, kl, rec, coarse, y, valid, cw, beta)]
    hp = (0.0, 2.0, 4.0, 0.5, 0.5, 0.5, 0.1)
    torch.library.opcheck(torch.ops.cmath_fast.loss_fwd, (*args, *hp), test_utils=OPCHECK_TESTS)
    total, terms = torch.ops.cmath_fast.loss_fwd(*args, *hp)
    z, f, fine, kl, rec, coarse, y, valid, cw, beta = args
    torch.library.opcheck(torch.ops.cmath_fast.loss_bwd,
                          (torch.ones((), device=DEVICE), z, f, fine, coarse, y, valid, cw, terms, *hp[1:],
                           True, True, True, True), test_utils=OPCHECK_TESTS)
