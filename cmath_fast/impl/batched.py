"""Batched building blocks of the fused implementation: C modules of the same shape applied to C
stacked inputs in one launch, reading the modules' own parameters (their gradients flow back to
each module)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops._common import autocast_inputs


class BatchedLinearFunction(torch.autograd.Function):
    """y = x W^T + b for C linears at once: x (C, N, d_in), W (C, d_out, d_in), b (C, d_out).
    Its backward produces dW in W's own layout (dy^T x), so the gradients that flow back to the
    individual nn.Linear weights need no layout copy."""

    @staticmethod
    def forward(ctx, x, w, b):
        # Under torch.autocast, compute (and save) in the autocast dtype, as nn.Linear does; the
        # backward then runs in that dtype too and hands each gradient back in its input's dtype.
        ctx.dtypes = (x.dtype, w.dtype, b.dtype)
        x, w, b = autocast_inputs(x, w, b)
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        x_dtype, w_dtype, b_dtype = ctx.dtypes
        dy = dy.to(x.dtype)
        dx = torch.bmm(dy, w).to(x_dtype) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), x).to(w_dtype) if ctx.needs_input_grad[1] else None
        db = dy.sum(1).to(b_dtype) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def batched_linear(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """x (C, N, d_in) through C nn.Linear -> (C, N, d_out), one batched GEMM."""
    w = torch.stack([lin.weight for lin in linears])
    b = torch.stack([lin.bias for lin in linears])
    return BatchedLinearFunction.apply(x, w, b)


def kv_projection(inp: torch.Tensor, attns: Sequence[nn.Module], S: int) -> torch.Tensor:
    """Every (stream, module) key/value projection in one GEMM: inp (S*C, N, d), stream-major ->
    (S*C, N, 2d) with [k | v] on the last axis, the layout the packed attention op reads."""
    w = torch.cat([torch.stack([a.w_k[s].weight for s in range(S) for a in attns]),
                   torch.stack([a.w_v[s].weight for s in range(S) for a in attns])], dim=1)
    b = torch.cat([torch.stack([a.w_k[s].bias for s in range(S) for a in attns]),
                   torch.stack([a.w_v[s].bias for s in range(S) for a in attns])], dim=1)
    return BatchedLinearFunction.apply(inp, w, b)


def stacked_layer_norm(x: torch.Tensor, norms: Sequence[nn.LayerNorm]) -> torch.Tensor:
    """LayerNorm of x (C, ..., d) with the C norms' own affine parameters and eps."""
    eps = norms[0].eps
    if any(n.eps != eps or tuple(n.normalized_shape) != (x.shape[-1],) for n in norms):
        raise ValueError("stacked_layer_norm: the norms must share eps and shape "
                         f"({[(n.eps, tuple(n.normalized_shape)) for n in norms]})")
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:], eps=eps)
    w = torch.stack([n.weight for n in norms]).view(shape)
    b = torch.stack([n.bias for n in norms]).view(shape)
    return torch.addcmul(b, y, w)


def dropout(x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
    """``module``'s dropout (its rate and its training flag) applied to a stacked tensor."""
    if not module.training or module.p == 0.0:
        return x
    return F.dropout(x, module.p, True)
