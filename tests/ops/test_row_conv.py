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


@pytest.mark.parametrize("with_xb", [True, False])
def test_groups_match_conv1d_per_group(with_xb):
    """Three groups of different widths in one launch (a second input continuing each group's
    channels, the reconstruction partial sums): each group equals its own Conv1d on
    cat([x_g[..., :CI_g], xb_g]), zero past its channels up to the output's width (the widest
    group's rounded up to 16); every gradient matches, the upstream gradient past a group's
    channels (random here) being ignored. Group 2 (CI 12 of 17) reads x to 16: x's extra columns
    meet zero weights."""
    from cmath_fast.ops.row_conv import row_conv_groups
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([6, 3, 0, 1])
    B, L, C_B, K = 4, 6, (5 if with_xb else 0), 3
    mask = torch.arange(L)[None] < lengths[:, None]
    widths = [(17, 9), (7, 20), (12, 4)]  # (CI_g, CO_g)
    C_X, C_Y, C_PAD = 17, 20, 32
    x = torch.randn(3, B, L, C_X, generator=g).double() * mask[..., None]
    xb = torch.randn(3, B, L, C_B, generator=g).double() * mask[..., None] if with_xb else None
    ws = [(torch.randn(co, ci + C_B, K, generator=g) * 0.3).double().requires_grad_() for ci, co in widths]
    bs = [torch.randn(co, generator=g).double().requires_grad_() for _, co in widths]
    ref_t = torch.randn(3, B, L, C_Y, generator=g).double()
    dy = torch.randn(3, B, L, C_PAD, generator=g).double()
    xr = x.clone().requires_grad_()
    xbr = xb.clone().requires_grad_() if with_xb else None
    loss_r, rec_r = 0.0, 0.0
    for i, (ci, co) in enumerate(widths):
        inp = torch.cat([xr[i, ..., :ci], xbr[i]], -1) if with_xb else xr[i, ..., :ci]
        y = F.gelu(F.conv1d(inp.transpose(1, 2), ws[i], bs[i], padding=1)).transpose(1, 2) * mask[..., None]
        loss_r = loss_r + (y * dy[i, ..., :co]).sum()
        rec_r = rec_r + (((y - ref_t[i, ..., :co]) ** 2) * mask[..., None]).sum().item() / co
    grads_r = torch.autograd.grad(loss_r, [xr] + ([xbr] if with_xb else []) + ws + bs)

    pos, ln = (t.to(DEVICE) for t in dialogue_rows(lengths, L))
    dev = lambda t: t.detach().reshape(3, B * L, -1).float().to(DEVICE)  # noqa: E731
    xo = dev(x).requires_grad_()
    xbo = dev(xb).requires_grad_() if with_xb else None
    wo = [w.detach().float().to(DEVICE).requires_grad_() for w in ws]
    bo = [b.detach().float().to(DEVICE).requires_grad_() for b in bs]
    y, part = row_conv_groups(xo, wo, bo, pos, ln, activation="gelu", xb=xbo, ref=dev(ref_t))
    assert y.shape == (3, B * L, C_PAD)
    for i, (ci, co) in enumerate(widths):
        assert torch.count_nonzero(y[i, :, co:]) == 0, "zero past the group's channels"
    assert abs(part.sum().item() - rec_r) <= 1e-4 * max(1.0, rec_r)
    grads = torch.autograd.grad((y * dev(dy)).sum(), [xo] + ([xbo] if with_xb else []) + wo + bo)
    tol = dict(atol=2e-5, rtol=1e-5)
    m = mask.reshape(1, B * L, 1).to(DEVICE)
    torch.testing.assert_close(grads[0].double().cpu() * m.cpu(), grads_r[0].reshape(3, B * L, C_X) * m.cpu(), **tol)
    if with_xb:
        torch.testing.assert_close(grads[1].double().cpu() * m.cpu(), grads_r[1].reshape(3, B * L, C_B) * m.cpu(), **tol)
    for o, r in zip(grads[1 + with_xb:], grads_r[1 + with_xb:]):
        torch.testing.assert_close(o.double().cpu(), r, **tol)


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
@pytest.mark.parametrize("act, bias, groups", [(1, True, False), (0, False, False), (1, True, True)])
def test_opcheck(act, bias, groups):
    from tests.ops.test_library import OPCHECK_TESTS
    g = torch.Generator().manual_seed(2)
    pos, ln = (t.to(DEVICE) for t in dialogue_rows(torch.tensor([5, 3]), 5))
    if groups:  # three groups of different widths, a second input, the reconstruction sums
        x = torch.randn(3, 10, 16, generator=g).to(DEVICE)
        xb = torch.randn(3, 10, 8, generator=g).to(DEVICE)
        # the operators take tap-major weights (K, C_in, C_out)
        ws = [torch.randn(3, ci + 8, co, generator=g).to(DEVICE) for ci, co in ((16, 20), (9, 12), (16, 4))]
        ref = torch.randn(3, 10, 20, generator=g).to(DEVICE)
    else:
        x, xb, ref = torch.randn(1, 10, 16, generator=g).to(DEVICE), None, None
        ws = [torch.randn(3, 16, 20, generator=g).to(DEVICE)]
    bs = [torch.randn(w.shape[2], generator=g).to(DEVICE) for w in ws] if bias else None
    torch.library.opcheck(torch.ops.cmath_fast.row_conv_fwd, (x, xb, ws, bs, pos, ln, 1, act, True, ref),
                          test_utils=OPCHECK_TESTS)
    y, pre, _ = torch.ops.cmath_fast.row_conv_fwd(x, xb, ws, bs, pos, ln, 1, act, True, ref)
    torch.library.opcheck(torch.ops.cmath_fast.row_conv_bwd,
                          (torch.randn_like(y), x, xb, ws, pre, pos, ln, 1, act, bias, True), test_utils=OPCHECK_TESTS)
