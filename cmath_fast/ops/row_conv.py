"""``row_conv``: the U-Net's Conv1d over the utterance axis on the row-major (rows, channels)
layout, with bias, activation and the padding mask fused (Triton). Same weights as the
``nn.Conv1d`` it replaces; dialogue boundaries come from each row's position and dialogue length,
so it serves the padded B x L layout and packed rows alike. ``row_conv_groups``: up to three such
convolutions over the same rows (the three modalities' U-Nets) in one launch each way, with an
optional second input continuing each group's channels (a concatenation without the copy) and
the reconstruction loss's partial sums in the epilogue."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .._checks import check_tensor
from ..profiling import nvtx_range
from ._common import autocast_inputs, check_device, kernel_dtype
from ._library import op

ACTIVATIONS = {None: 0, "none": 0, "gelu": 1}


def dialogue_rows(lengths: torch.Tensor, max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(pos, lens), each (B * max_len,) int32, for the padded layout flattened to rows: row
    b * max_len + l is at position l of dialogue b, whose length is lengths[b]."""
    B = lengths.shape[0]
    pos = torch.arange(max_len, device=lengths.device, dtype=torch.int32).repeat(B)
    lens = lengths.to(torch.int32).repeat_interleave(max_len)
    return pos, lens


class RowConvFunction(torch.autograd.Function):
    """y (G, N, C_Y) [, reconstruction partial sums] of G grouped row convolutions; params: the G
    weights (Conv1d's layout, any float dtype: the master weights themselves, cast to x's dtype,
    laid out tap-major and zero-padded by the ``row_conv_taps`` operator in one launch for the G),
    then the G biases (when there are biases). The weight gradients come back in fp32 from the
    kernel and are handed to the weights in their own dtype: an fp32 master weight under autocast
    gets its gradient with no cast at all."""

    @staticmethod
    def forward(ctx, x, xb, pos, lens, pad, act, ref, n_groups, *params):
        ctx.set_materialize_grads(False)
        taps = [t[..., :w.shape[0]] for t, w in
                zip(op("row_conv_taps")([w.detach() for w in params[:n_groups]], x.dtype), params)]
        biases = list(params[n_groups:]) or None
        y, pre, part = op("row_conv_fwd")(x, xb, taps, biases, pos, lens, pad, act, any(ctx.needs_input_grad), ref)
        ctx.save_for_backward(x, xb, pre, pos, lens, *taps)
        ctx.weights = [(w.shape, w.dtype) for w in params[:n_groups]]
        ctx.cfg = (pad, act, n_groups, [b.dtype for b in biases] if biases is not None else None)
        ctx.mark_non_differentiable(part)
        return y, part

    @staticmethod
    def backward(ctx, dy, _dpart):
        pad, act, G, b_dtypes = ctx.cfg
        n_params = G * (2 if b_dtypes is not None else 1)
        if dy is None:
            return (None,) * (8 + n_params)
        x, xb, pre, pos, lens, *taps = ctx.saved_tensors
        need_x, need_xb = ctx.needs_input_grad[:2]
        with nvtx_range("op/row_conv", "bwd"):
            dx, dxb, dw, db = op("row_conv_bwd")(dy.to(x.dtype).contiguous(), x, xb, taps, pre, pos, lens, pad,
                                                 act, b_dtypes is not None, bool(need_x or need_xb))
        dws, dbs, at, bt = [], [], 0, 0
        for g, (shape, dtype) in enumerate(ctx.weights):
            dws.append(dw[at:at + shape.numel()].view(shape).to(dtype))
            at += shape.numel()
            if b_dtypes is not None:
                dbs.append(db[bt:bt + shape[0]].to(b_dtypes[g]))
                bt += shape[0]
        return (dx if need_x else None, dxb if need_xb else None, None, None, None, None, None, None, *dws, *dbs)


def _check_conv(x, weights, biases, pos, lens, activation, c_b=0):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(a for a in ACTIVATIONS if a)} or None, "
                         f"got {activation!r}")
    kernel_dtype("x", x)
    check_device("x", x)
    K = weights[0].shape[-1] if weights[0].dim() == 3 else None
    for g, w in enumerate(weights):
        check_tensor("weight", w, ndim=3, floating=True, device=x.device)
        if not 0 < w.shape[1] - c_b <= x.shape[-1]:
            raise ValueError(f"weight: expected at most {x.shape[-1]} input channels"
                             f"{f' + {c_b} of xb' if c_b else ''} (x is {tuple(x.shape)}), got {tuple(w.shape)}")
        if w.shape[2] % 2 != 1 or w.shape[2] != K:
            raise ValueError(f"weight: the kernel size must be odd (padding K // 2 keeps the length) and the "
                             f"same for every group, got {tuple(w.shape)}")
        if biases is not None:
            check_tensor("bias", biases[g], ndim=1, dtype=x.dtype, device=x.device)
            if biases[g].shape[0] != w.shape[0]:
                raise ValueError(f"bias: expected ({w.shape[0]},), got {tuple(biases[g].shape)}")
    n = x.shape[-2]
    for name, t in (("pos", pos), ("lens", lens)):
        check_tensor(name, t, ndim=1, dtype=torch.int32, device=x.device)
        if t.shape[0] != n:
            raise ValueError(f"{name}: expected ({n},) (one per row of x), got {tuple(t.shape)}")


def row_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pos: torch.Tensor,
             lens: torch.Tensor, *, activation: Optional[str] = None) -> torch.Tensor:
    """x (N, C_in) rows; weight (C_out, C_in, K) and bias (C_out,) of an ``nn.Conv1d`` with
    padding K // 2; pos, lens (N,) each row's position in its dialogue and that dialogue's length
    (``dialogue_rows`` builds them for the padded layout) -> act(conv) (N, C_out), zero on padding
    rows (pos >= lens). A shifted row never crosses into another dialogue; padding rows are never
    read. Inside ``torch.autocast`` x, weight and bias run in the autocast dtype, as Conv1d's do (the
    weight is cast inside the op, and its gradient handed back in the weight's own dtype)."""
    x, bias = autocast_inputs(x, bias)
    check_tensor("x", x, ndim=2, floating=True)
    check_tensor("weight", weight, ndim=3)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected {x.shape[1]} input channels (x is {tuple(x.shape)}), "
                         f"got {tuple(weight.shape)}")
    biases = [bias] if bias is not None else None
    _check_conv(x, [weight], biases, pos, lens, activation)
    with nvtx_range("op/row_conv"):
        y, _ = RowConvFunction.apply(x[None], None, pos, lens, weight.shape[2] // 2, ACTIVATIONS[activation], None,
                                     1, weight.contiguous(), *(biases or []))
    return y[0, :, :weight.shape[0]]


def row_conv_groups(x: torch.Tensor, weights: Sequence[torch.Tensor], biases: Optional[Sequence[torch.Tensor]],
                    pos: torch.Tensor, lens: torch.Tensor, *, activation: Optional[str] = None,
                    xb: Optional[torch.Tensor] = None, ref: Optional[torch.Tensor] = None):
    """G <= 3 row convolutions over the same rows in one launch: x (G, N, C_X), group g reading its
    first CI_g channels; weights[g] (CO_g, CI_g + C_B, K) with one K; biases[g] (CO_g,) or None;
    xb (G, N, C_B): channels that continue each group's input (as ``cat([x_g, xb_g], -1)``)
    -> y (G, N, C_Y), C_Y = max CO_g rounded up to a multiple of 16 (rows of whole 16-byte runs),
    zero past each group's CO_g channels and on padding rows; the gradient past a group's CO_g
    channels is ignored (it meets zero weights). ``ref``
    (G, N, >= CO_g): also returns the reconstruction loss's partial sums (fp32; see
    ``kernels.row_conv``) of sum over valid rows of |y_g - ref_g|^2 / CO_g: (y, part). Inside
    ``torch.autocast`` x, xb and the biases run in the autocast dtype; the weights are read in that
    dtype and their gradients handed back in their own (fp32 master weights: no cast)."""
    # (ref is read in any float dtype: under autocast the loss compares with the uncast values; the
    # weights are cast inside the op, where they are also laid out tap-major, in one copy)
    x, xb, biases = autocast_inputs(x, xb, list(biases) if biases else None)
    check_tensor("x", x, ndim=3, floating=True)
    if not 1 <= x.shape[0] <= 3 or len(weights) != x.shape[0]:
        raise ValueError(f"row_conv_groups: 1 to 3 groups with one weight each, got x {tuple(x.shape)} and "
                         f"{len(weights)} weights")
    if xb is not None:
        check_tensor("xb", xb, ndim=3, dtype=x.dtype, device=x.device)
        if tuple(xb.shape[:2]) != tuple(x.shape[:2]):
            raise ValueError(f"xb: expected ({x.shape[0]}, {x.shape[1]}, C_B), got {tuple(xb.shape)}")
    if ref is not None:
        check_tensor("ref", ref, ndim=3, floating=True, device=x.device)
        if tuple(ref.shape[:2]) != tuple(x.shape[:2]) or ref.shape[2] < max(w.shape[0] for w in weights):
            raise ValueError(f"ref: expected ({x.shape[0]}, {x.shape[1]}, >= C_out), got {tuple(ref.shape)}")
    _check_conv(x, weights, biases, pos, lens, activation, xb.shape[-1] if xb is not None else 0)
    with nvtx_range("op/row_conv"):
        y, part = RowConvFunction.apply(
            x if x.stride(-1) == 1 else x.contiguous(), xb if xb is None or xb.stride(-1) == 1 else xb.contiguous(),
            pos, lens, weights[0].shape[2] // 2, ACTIVATIONS[activation], ref, len(weights),
            *[w.contiguous() for w in weights], *(biases or []))
    return (y, part) if ref is not None else y
