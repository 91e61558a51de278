"""``stacked_layer_norm_op``: LayerNorm of C stacked inputs with their C modules' own affine
parameters in one Triton launch each way (``kernels.layer_norm``); what ``F.layer_norm`` followed
by a per-stack affine computes."""

from __future__ import annotations

from typing import Sequence

import torch

from ..kernels.layer_norm import MAX_D
from ..profiling import nvtx_range
from ._common import float_promotion
from ._library import op


class StackedLayerNormFunction(torch.autograd.Function):
    """y (C, ..., D); w, b (C, D). ``params``: when given, the C weights then the C biases whose
    slices w and b are (tied stacks): their gradients go to them, slice by slice."""

    @staticmethod
    def forward(ctx, x, w, b, eps, *params):
        out_dtype = float_promotion(x.dtype, w.dtype)
        shape = x.shape
        x3 = x.reshape(shape[0], -1, shape[-1])
        y, mean, rstd = op("layer_norm_fwd")(x3, w, b, eps, out_dtype)
        ctx.save_for_backward(x3, w, mean, rstd)
        ctx.meta = (shape, len(params) // 2, w.dtype, b.dtype)  # tied params: slices of w and b, same dtypes
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x3, w, mean, rstd = ctx.saved_tensors
        shape, n, w_dtype, b_dtype = ctx.meta
        with nvtx_range("op/layer_norm", "bwd"):
            dx, dw, db = op("layer_norm_bwd")(dy.reshape(x3.shape).to(x3.dtype).contiguous(), x3, w, mean, rstd)
        dx = dx.view(shape)
        if n:
            return (dx, None, None, None, *dw.to(w_dtype).unbind(0), *db.to(b_dtype).unbind(0))
        return dx, dw.to(w_dtype), db.to(b_dtype), None


__all__ = ["MAX_D", "StackedLayerNormFunction", "stacked_layer_norm_op"]


def stacked_layer_norm_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float,
                          params: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """x (C, ..., D); w, b (C, D) -> LayerNorm of each x[c] over D with (w[c], b[c]), in the dtype
    ``x * w`` has. ``params``: see ``StackedLayerNormFunction``."""
    C, D = x.shape[0], x.shape[-1]
    if tuple(w.shape) != (C, D) or tuple(b.shape) != (C, D):
        raise ValueError(f"w and b: expected ({C}, {D}), got {tuple(w.shape)} and {tuple(b.shape)}")
    with nvtx_range("op/layer_norm"):
        return StackedLayerNormFunction.apply(x if x.is_contiguous() else x.contiguous(), w.contiguous(),
                                              b.contiguous(), float(eps), *params)
