"""The stacked LayerNorm (``cmath_fast.ops.layer_norm``) against ``F.layer_norm`` applied to each
stack with its own affine parameters: outputs and every gradient, awkward widths and row counts,
fp32 and bf16 (2x rule), gradients handed to tied parameters slice by slice; opcheck."""

import os

import pytest
import torch
import torch.nn.functional as F

from cmath_fast.ops import _library
from cmath_fast.ops.layer_norm import stacked_layer_norm_op

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _case(C, rows, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((C,) + rows + (D,), generator=g).double() * 2 + 0.5
    w = (torch.randn(C, D, generator=g) * 0.5 + 1).double()
    b = torch.randn(C, D, generator=g).double()
    dy = torch.randn(x.shape, generator=g).double()
    return x, w, b, dy


def _reference(x, w, b, eps):
    return torch.stack([F.layer_norm(x[c], x.shape[-1:], w[c], b[c], eps) for c in range(x.shape[0])])


@pytest.mark.parametrize("C, rows, D", [(3, (2, 5), 20), (1, (7,), 16), (2, (1, 1), 100), (3, (33,), 64)])
def test_matches_layer_norm_fp32(C, rows, D):
    x, w, b, dy = _case(C, rows, D)
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    ref = _reference(*leaves, 1e-5)
    grads_r = torch.autograd.grad(ref, leaves, dy)
    ours = [t.float().to(DEVICE).requires_grad_() for t in (x, w, b)]
    y = stacked_layer_norm_op(*ours, 1e-5)
    grads = torch.autograd.grad(y, ours, dy.float().to(DEVICE))
    tol = dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y.double().cpu(), ref.detach(), **tol)
    for name, o, r in zip(("dx", "dw", "db"), grads, grads_r):
        torch.testing.assert_close(o.double().cpu(), r, **tol, msg=name)


def test_bf16_within_twice_pytorchs_error():
    x, w, b, dy = _case(3, (40,), 48, seed=1)
    exact = [t.clone().requires_grad_() for t in (x, w, b)]
    ex_y = _reference(*exact, 1e-5)
    ex = [ex_y] + list(torch.autograd.grad(ex_y, exact, dy))
    theirs = [t.bfloat16().requires_grad_() for t in (x, w, b)]
    th_y = _reference(*theirs, 1e-5)
    th = [th_y] + list(torch.autograd.grad(th_y, theirs, dy.bfloat16()))
    ours = [t.bfloat16().to(DEVICE).requires_grad_() for t in (x, w, b)]
    y = stacked_layer_norm_op(*ours, 1e-5)
    mine = [y] + list(torch.autograd.grad(y, ours, dy.bfloat16().to(DEVICE)))
    assert mine[0].dtype == torch.bfloat16 and mine[2].dtype == torch.bfloat16
    for name, o, r, e in zip(("y", "dx", "dw", "db"), mine, th, ex):
        e = e.detach()
        err_o = (o.double().cpu() - e).abs().max().item()
        err_r = (r.detach().double() - e).abs().max().item()
        assert err_o <= 2 * err_r + 2 ** -8 * e.abs().max().item(), (name, err_o, err_r)


def test_tied_parameters_get_their_slices():
    x, w, b, dy = _case(3, (6,), 24, seed=2)
    norms = [torch.nn.LayerNorm(24).to(DEVICE) for _ in range(3)]
    with torch.no_grad():
        for c, n in enumerate(norms):
            n.weight.copy_(w[c])
            n.bias.copy_(b[c])
    params = [n.weight for n in norms] + [n.bias for n in norms]
    ws, bs = torch.stack(params[:3]).detach(), torch.stack(params[3:]).detach()
    xd = x.float().to(DEVICE).requires_grad_()
    y = stacked_layer_norm_op(xd, ws, bs, 1e-5, params)
    y.backward(dy.float().to(DEVICE))
    ref = [t.clone().requires_grad_() for t in (x, w, b)]
    _, gw, gb = torch.autograd.grad(_reference(*ref, 1e-5), ref, dy)
    for c, n in enumerate(norms):
        torch.testing.assert_close(n.weight.grad.double().cpu(), gw[c], atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(n.bias.grad.double().cpu(), gb[c], atol=2e-5, rtol=1e-5)


def test_clear_error():
    x = torch.randn(3, 4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="w and b: expected"):
        stacked_layer_norm_op(x, torch.ones(2, 8, device=DEVICE), torch.zeros(3, 8, device=DEVICE), 1e-5)


@pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
def test_opcheck():
    from tests.ops.test_library import OPCHECK_TESTS
    x, w, b, dy = (t.float().to(DEVICE) for t in _case(3, (5,), 20))
    torch.library.opcheck(torch.ops.cmath_fast.layer_norm_fwd, (x, w, b, 1e-5, torch.float32),
                          test_utils=OPCHECK_TESTS)
    _, mean, rstd = torch.ops.cmath_fast.layer_norm_fwd(x, w, b, 1e-5, torch.float32)
    torch.library.opcheck(torch.ops.cmath_fast.layer_norm_bwd, (dy, x, w, mean, rstd), test_utils=OPCHECK_TESTS)
