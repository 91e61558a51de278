"""``row_conv``: the U-Net's Conv1d over the utterance axis on the row-major (rows, channels)
layout, with bias, activation and the padding mask fused (Triton). Same weights as the
``nn.Conv1d`` it replaces; dialogue boundaries come from each row's position and dialogue length,
so it serves the padded B x L layout and packed rows alike."""

from __future__ import annotations

from typing import Optional, Tuple

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
    @staticmethod
    def forward(ctx, x, weight, bias, pos, lens, pad, act):
        ctx.set_materialize_grads(False)
        needs = any(ctx.needs_input_grad[:3])
        y, pre = op("row_conv_fwd")(x, weight, bias, pos, lens, pad, act, needs)
        ctx.save_for_backward(x, weight, pre, pos, lens)
        ctx.cfg = (pad, act, bias is not None, bias.dtype if bias is not None else None)
        return y

    @staticmethod
    def backward(ctx, dy):
        if dy is None:
            return (None,) * 7
        x, weight, pre, pos, lens = ctx.saved_tensors
        pad, act, has_bias, b_dtype = ctx.cfg
        with nvtx_range("op/row_conv", "bwd"):
            dx, dw, db = op("row_conv_bwd")(dy.to(x.dtype), x, weight, pre, pos, lens, pad, act, has_bias,
                                            ctx.needs_input_grad[0])
        return (dx if ctx.needs_input_grad[0] else None, dw.to(weight.dtype),
                db.to(b_dtype) if has_bias else None, None, None, None, None)


def row_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], pos: torch.Tensor,
             lens: torch.Tensor, *, activation: Optional[str] = None) -> torch.Tensor:
    """x (N, C_in) rows; weight (C_out, C_in, K) and bias (C_out,) of an ``nn.Conv1d`` with
    padding K // 2; pos, lens (N,) each row's position in its dialogue and that dialogue's length
    (``dialogue_rows`` builds them for the padded layout) -> act(conv) (N, C_out), zero on padding
    rows (pos >= lens). A shifted row never crosses into another dialogue; padding rows are never
    read. Inside ``torch.autocast`` x, weight and bias run in the autocast dtype, as Conv1d's do."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(a for a in ACTIVATIONS if a)} or None, "
                         f"got {activation!r}")
    x, weight, bias = autocast_inputs(x, weight, bias)
    check_tensor("x", x, ndim=2, floating=True)
    kernel_dtype("x", x)
    check_device("x", x)
    check_tensor("weight", weight, ndim=3, dtype=x.dtype, device=x.device)
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight: expected {x.shape[1]} input channels (x is {tuple(x.shape)}), "
                         f"got {tuple(weight.shape)}")
    if weight.shape[2] % 2 != 1:
        raise ValueError(f"weight: the kernel size must be odd (padding K // 2 keeps the length), "
                         f"got {weight.shape[2]}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtype=x.dtype, device=x.device)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("pos", pos), ("lens", lens)):
        check_tensor(name, t, ndim=1, dtype=torch.int32, device=x.device)
        if t.shape[0] != x.shape[0]:
            raise ValueError(f"{name}: expected ({x.shape[0]},) (one per row of x), got {tuple(t.shape)}")
    with nvtx_range("op/row_conv"):
        return RowConvFunction.apply(x, weight, bias, pos, lens, weight.shape[2] // 2, ACTIVATIONS[activation])
