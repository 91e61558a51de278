"""The U-Net's row convolution (``cmath_fast.ops.row_conv``) against ``nn.Conv1d`` on the
channel-first layout the reference uses: forward and every gradient, on awkward shapes (channels
not a multiple of 16, empty and one-utterance dialogues, k = 1, 3, 5), in fp32 and bf16; packed
rows (no padding, any dialogue order) agree with the padded layout; the operators pass opcheck."""

import os

import pytest
import torch
import torch.nn.functional as F

from cmath_fast.ops import _library
from cmath_fast.ops.row_conv import dialogue_rows, row_conv

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(x, conv, mask, act):
    """The reference U-Net's step: Conv1d on (B, C, L), activation, padding rows zeroed."""
    y = conv(x.transpose(1, 2)).transpose(1, 2)
    return (F.gelu(y) if act else y) * mask[..., None].to(y.dtype)


def _case(lengths, c_in, c_out, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(max(lengths), 1)
    lens = torch.tensor(lengths)
    mask = torch.arange(L)[None] < lens[:, None]
    conv = torch.nn.Conv1d(c_in, c_out, k, padding=k // 2).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    x = torch.randn(B, L, c_in, generator=g).double() * mask[..., None]
    dy = torch.randn(B, L, c_out, generator=g).double()
    return lens, mask, conv, x, dy


def _ours(x, conv, lens, dy, act, dtype):
    B, L, C = x.shape
    pos, ln = (t.to(DEVICE) for t in dialogue_rows(lens, L))
    xr = x.reshape(B * L, C).to(DEVICE, dtype).requires_grad_()
    w = conv.weight.detach().to(DEVICE, dtype).requires_grad_()
    b = conv.bias.detach().to(DEVICE, dtype).requires_grad_()
    y = row_conv(xr, w, b, pos, ln, activation=act)
    y.backward(dy.reshape(B * L, -1).to(DEVICE, dtype))
    return y.view(B, L, -1), xr.grad.view(B, L, C), w.grad, b.grad


@pytest.mark.parametrize("lengths, c_in, c_out, k", [
    ([7, 4, 1], 20, 24, 3),
    ([5, 0, 3, 2], 17, 33, 5),
    ([6, 6], 16, 16, 1),
    ([1], 9, 40, 3),
])
@pytest.mark.parametrize("act", ["gelu", None])
def test_matches_conv1d_fp32(lengths, c_in, c_out, k, act):
    lens, mask, conv, x, dy = _case(lengths, c_in, c_out, k)
    xd = x.clone().requires_grad_()
    ref = _reference(xd, conv, mask, act)
    gx, gw, gb = torch.autograd.grad(ref, (xd, conv.weight, conv.bias), dy)
    y, dx, dw, db = _ours(x, conv, lens, dy, act, torch.float32)
    tol = dict(atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(y.double().cpu(), ref.detach(), **tol)
    m = mask[..., None]
    # padding rows are never read: their gradient is zero (the reference's is masked out later)
    torch.testing.assert_close(dx.double().cpu() * m, gx * m, **tol)
    assert torch.count_nonzero(dx.cpu()[~mask]) == 0
    torch.testing.assert_close(dw.double().cpu(), gw, **tol)
    torch.testing.assert_close(db.double().cpu(), gb, **tol)


def test_bf16_within_twice_conv1ds_error():
    """bf16 in, fp32 accumulation: no further from the fp64 result than Conv1d in bf16 (2x + a
    floor of a few bf16 ulps, flash-attention's rule)."""
    lens, mask, conv, x, dy = _case([9, 5, 2], 32, 48, 3, seed=3)
    xd = x.clone().requires_grad_()
    exact = _reference(xd, conv, mask, "gelu")
    ex = torch.autograd.grad(exact, (xd, conv.weight, conv.bias), dy)
    cb = torch.nn.Conv1d(32, 48, 3, padding=1).to(torch.bfloat16)
    cb.load_state_dict(conv.state_dict())
    xb = x.to(torch.bfloat16).requires_grad_()
    ref = _reference(xb, cb, mask, "gelu")
    rg = torch.autograd.grad(ref, (xb, cb.weight, cb.bias), dy.to(torch.bfloat16))
    ours = _ours(x, conv, lens, dy, "gelu", torch.bfloat16)
    m = mask[..., None]
    pairs = [(ours[0], ref, exact), (ours[1] * m.to(DEVICE), rg[0] * m, ex[0] * m),
             (ours[2], rg[1], ex[1]), (ours[3], rg[2], ex[2])]
    for name, (o, r, e) in zip(("y", "dx", "dw", "db"), pairs):
        e = e.detach().double()
        err_o = (o.double().cpu() - e).abs().max().item()
        err_r = (r.detach().double() - e).abs().max().item()
        assert err_o <= 2 * err_r + 2 ** -8 * e.abs().max().item(), (name, err_o, err_r)  # + half a bf16 ulp


def test_packed_rows_match_the_padded_layout():
    """Rows packed without padding, dialogues in another order: the same values row for row."""
    lens, mask, conv, x, dy = _case([6, 2, 4], 16, 16, 3, seed=5)
    y_pad = _ours(x, conv, lens, dy, "gelu", torch.float32)[0]
    order = [2, 0, 1]
    rows = torch.cat([x[b, : int(lens[b])] for b in order])
    pos = torch.cat([torch.arange(int(lens[b])) for b in order]).to(torch.int32)
    ln = torch.cat([torch.full((int(lens[b]),), int(lens[b])) for b in order]).to(torch.int32)
    w, b = conv.weight.detach().float().to(DEVICE), conv.bias.detach().float().to(DEVICE)
    y = row_conv(rows.float().to(DEVICE), w, b, pos.to(DEVICE), ln.to(DEVICE), activation="gelu")
    expect = torch.cat([y_pad[b, : int(lens[b])] for b in order])
    torch.testing.assert_close(y, expect, atol=1e-6, rtol=1e-6)


def test_clear_errors():
    x = torch.randn(4, 8, device=DEVICE)
    w, pos, ln = torch.randn(6, 8, 3, device=DEVICE), torch.zeros(4, dtype=torch.int32, device=DEVICE), \
        torch.ones(4, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="input channels"):
        row_conv(x, torch.randn(6, 5, 3, device=DEVICE), None, pos, ln)
    with pytest.raises(ValueError, match="odd"):
        row_conv(x, torch.randn(6, 8, 2, device=DEVICE), None, pos, ln)
    with pytest.raises(TypeError, match="pos: expected dtype torch.int32"):
        row_conv(x, w, None, pos.long(), ln)
    with pytest.raises(ValueError, match="lens: expected \\(4,\\)"):
        row_conv(x, w, None, pos, ln[:3])
    with pytest.raises(ValueError, match="activation"):
        row_conv(x, w, None, pos, ln, activation="relu")


@pytest.mark.skipif(not _library._REGISTERED, reason=_library.REASON)
@pytest.mark.parametrize("act, bias", [(1, True), (0, False)])
def test_opcheck(act, bias):
    from tests.ops.test_library import OPCHECK_TESTS
    g = torch.Generator().manual_seed(2)
    x = torch.randn(10, 16, generator=g).to(DEVICE)
    w = torch.randn(20, 16, 3, generator=g).to(DEVICE)
    b = torch.randn(20, generator=g).to(DEVICE) if bias else None
    pos, ln = (t.to(DEVICE) for t in dialogue_rows(torch.tensor([5, 3]), 5))
    torch.library.opcheck(torch.ops.cmath_fast.row_conv_fwd, (x, w, b, pos, ln, 1, act, True),
                          test_utils=OPCHECK_TESTS)
    y, pre = torch.ops.cmath_fast.row_conv_fwd(x, w, b, pos, ln, 1, act, True)
    torch.library.opcheck(torch.ops.cmath_fast.row_conv_bwd,
                          (torch.randn_like(y), x, w, pre, pos, ln, 1, act, bias, True), test_utils=OPCHECK_TESTS)
