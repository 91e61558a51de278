"""The loss's fused per-utterance classification terms (``cmath_fast.ops.loss``) against the
torch code of ``cmath_fast.losses.classification_rows_ref``: values and gradients in float64
terms, K odd and even, one and three fine heads, two temperatures, with and without gradient into
the teacher; bf16 logits; opcheck of both operators."""

import os

import pytest
import torch

from cmath_fast.losses import classification_rows_ref
from cmath_fast.ops import _library
from cmath_fast.ops.loss import classification_rows

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(C, B, L, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, L, K, generator=g) * 3
    f = torch.randn(C, B, L, K, generator=g) * 3
    y = torch.randint(0, K, (B, L), generator=g)
    w = [torch.rand(B, L, generator=g) for _ in range(3)]
    return z, f, y, w


@pytest.mark.parametrize("C, K", [(3, 6), (1, 7), (3, 2)])
@pytest.mark.parametrize("tau", [1.0, 8.0])
@pytest.mark.parametrize("detach", [True, False])
def test_matches_the_reference(C, K, tau, detach):
    z, f, y, w = _inputs(C, 3, 7, K)
    zr, fr = z.double().requires_grad_(), f.double().requires_grad_()
    ref = classification_rows_ref(zr, fr, y, tau, detach)
    # the reference's log-softmax runs in fp32 (.float()); compare in float64 terms
    loss_r = sum((r.double() * wi).sum() for r, wi in zip(ref, w))
    gz, gf = torch.autograd.grad(loss_r, (zr, fr))
    zo = z.to(DEVICE).requires_grad_()
    fo = f.to(DEVICE).requires_grad_()
    out = classification_rows(zo, fo, y.to(DEVICE), tau, detach)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o.double().cpu(), r.detach().double(), atol=1e-5, rtol=1e-5)
    loss_o = sum((o * wi.to(DEVICE)).sum() for o, wi in zip(out, w))
    dz, df = torch.autograd.grad(loss_o, (zo, fo))
    torch.testing.assert_close(dz.double().cpu(), gz, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(df.double().cpu(), gf, atol=1e-5, rtol=1e-4)
    if detach:
        # no distillation gradient into the teacher: dz is the coarse CE's alone
        only_ce = torch.autograd.grad((classification_rows_ref(zr, fr, y, tau, True)[0].double() * w[0]).sum(), zr)[0]
        torch.testing.assert_close(dz.double().cpu(), only_ce, atol=1e-5, rtol=1e-4)


def test_bf16_logits_and_a_missing_gradient():
    z, f, y, _ = _inputs(3, 2, 5, 6, seed=1)
    ref = classification_rows_ref(z, f, y, 2.0, False)
    zb = z.to(DEVICE, torch.bfloat16).requires_grad_()
    fb = f.to(DEVICE, torch.bfloat16).requires_grad_()
    out = classification_rows(zb, fb, y.to(DEVICE), 2.0, False)
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32
        torch.testing.assert_close(o.cpu(), r, atol=0.15, rtol=0.05)  # bf16 logits: 3 significant digits
    out[0].sum().backward()  # only ce: the other two terms' gradients are None
    assert zb.grad.dtype == torch.bfloat16 and fb.grad is not None
    assert fb.grad.abs().max().item() == 0.0


def test_clear_errors():
    z, f, y, _ = _inputs(3, 2, 5, 6)
    with pytest.raises(ValueError, match="fine_logits: expected"):
        classification_rows(z, f[:, :1], y, 1.0, True)
    with pytest.raises(ValueError, match="y: expected shape"):
        classification_rows(z, f, y[:1], 1.0, True)
    with pytest.raises(ValueError, match="tau"):
        classification_rows(z, f, y, 0.0, True)


@pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
def test_opcheck():
    from tests.ops.test_library import OPCHECK_TESTS
    z, f, y, _ = _inputs(3, 2, 5, 6)
    z, f, y = z.reshape(10, 6).to(DEVICE), f.reshape(3, 10, 6).to(DEVICE), y.reshape(10).to(DEVICE)
    torch.library.opcheck(torch.ops.cmath_fast.cls_fwd, (z, f, y, 2.0), test_utils=OPCHECK_TESTS)
    g = [torch.rand(10, device=DEVICE) for _ in range(3)]
    torch.library.opcheck(torch.ops.cmath_fast.cls_bwd, (z, f, y, *g, 2.0, True), test_utils=OPCHECK_TESTS)
