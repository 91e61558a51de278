"""Batched building blocks of the fused implementation: C modules of the same shape applied to C
stacked inputs in one launch, reading the modules' own parameters (their gradients flow back to
each module).

Tied stacks: the C weights (and biases) that one batched GEMM reads are made consecutive slices
of one buffer, once (``tied``: each parameter's ``.data`` becomes its slice; the parameter
objects, their names, the state_dict and the optimiser's references stay as they are). The GEMM
then reads the buffer in place, where ``torch.stack`` copied every weight on every forward. A
buffer is checked against its parameters' addresses on every call (a host comparison, nothing on
the device) and rebuilt if they moved (``model.to(...)`` gives each parameter new storage).
Under torch.compile the plain stack is traced instead.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import _compiling
from ..ops._common import autocast_inputs, mm_fp32
from ..ops.layer_norm import MAX_D, stacked_layer_norm_op


def tied(params: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
    """The (C, *shape) buffer whose slices are these C parameters (equal shapes, dtype and
    device), made so on first use; None while compiling, or if the parameters differ."""
    if _compiling() or not params:
        return None
    first = params[0]
    entry = getattr(first, "_cmath_tied", None)
    if entry is not None:
        ids, ptrs, base = entry
        if len(ids) == len(params) and all(id(p) == i and p.data_ptr() == q
                                           for p, i, q in zip(params, ids, ptrs)):
            return base
    if any(p.shape != first.shape or p.dtype != first.dtype or p.device != first.device for p in params):
        return None
    if first.is_cuda and torch.cuda.is_current_stream_capturing():
        return None  # never move parameters into a graph's private memory: stack them this time
    with torch.no_grad():
        base = torch.stack([p.detach() for p in params])
        for i, p in enumerate(params):
            p.data = base[i]
    # The buffer is kept alive here, so no later allocation can reuse its addresses: a parameter
    # whose address still matches is still its slice.
    first._cmath_tied = (tuple(id(p) for p in params), tuple(p.data_ptr() for p in params), base)
    return base


class BatchedLinearFunction(torch.autograd.Function):
    """y = x W^T + b for C linears at once: x (C, N, d_in), W (C, d_out, d_in), b (C, d_out).
    Its backward produces dW in W's own layout (dy^T x), so the gradients that flow back to the
    individual nn.Linear weights need no layout copy."""

    @staticmethod
    def forward(ctx, x, w, b):
        return _linear_fwd(ctx, x, w, b)

    @staticmethod
    def backward(ctx, dy):
        return _linear_bwd(ctx, dy, *ctx.needs_input_grad[:3])


def _linear_fwd(ctx, x, w, b):
    # Under torch.autocast, compute (and save) in the autocast dtype, as nn.Linear does; the
    # backward then runs in that dtype too and hands each gradient back in its input's dtype (the
    # weight's and bias's computed with fp32 results).
    ctx.dtypes = (x.dtype, w.dtype, b.dtype)
    x, w, b = autocast_inputs(x, w, b)
    ctx.save_for_backward(x, w)
    return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))


def _linear_bwd(ctx, dy, need_x, need_w, need_b):
    x, w = ctx.saved_tensors
    x_dtype, w_dtype, b_dtype = ctx.dtypes
    dy = dy.to(x.dtype)
    dx = torch.bmm(dy, w).to(x_dtype) if need_x else None
    # the weight gradients with fp32 results: an fp32 master weight gets them with no 16-bit round trip
    dw = mm_fp32(dy.transpose(1, 2), x).to(w_dtype) if need_w else None
    db = dy.sum(1, dtype=torch.float32).to(b_dtype) if need_b else None
    return dx, dw, db


class TiedLinearFunction(torch.autograd.Function):
    """``BatchedLinearFunction`` on tied stacks: w (C, d_out, d_in) and b (C, d_out) are buffers
    whose slices are the parameters given after them (weights, then biases); their gradients are
    handed back to those parameters slice by slice (views: no copy)."""

    @staticmethod
    def forward(ctx, x, w, b, *params):
        ctx.n = len(params) // 2
        ctx.shapes = (params[0].shape, params[ctx.n].shape)
        return _linear_fwd(ctx, x, w, b)

    @staticmethod
    def backward(ctx, dy):
        need = ctx.needs_input_grad
        dx, dw, db = _linear_bwd(ctx, dy, need[0], any(need[3:3 + ctx.n]), any(need[3 + ctx.n:]))
        # one slice per parameter (kv_projection views two parameters as one GEMM operand)
        w_shape, b_shape = ctx.shapes
        dws = list(dw.reshape((ctx.n,) + tuple(w_shape)).unbind(0)) if dw is not None else [None] * ctx.n
        dbs = list(db.reshape((ctx.n,) + tuple(b_shape)).unbind(0)) if db is not None else [None] * ctx.n
        return (dx, None, None, *dws, *dbs)


def _linear(x: torch.Tensor, weights: List[torch.Tensor], biases: List[torch.Tensor], w_shape=None,
            b_shape=None) -> torch.Tensor:
    """x (C, N, d_in) @ the C weights' transposes + biases, reading tied stacks when they can be
    made (``w_shape``/``b_shape``: how the stacked buffers are viewed by the GEMM)."""
    w, b = tied(weights), tied(biases)
    if w is None or b is None:
        w, b = torch.stack(weights), torch.stack(biases)
        if w_shape is not None:
            w, b = w.view(w_shape), b.view(b_shape)
        return BatchedLinearFunction.apply(x, w, b)
    if w_shape is not None:
        w, b = w.view(w_shape), b.view(b_shape)
    return TiedLinearFunction.apply(x, w, b, *weights, *biases)


def batched_linear(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """x (C, N, d_in) through C nn.Linear -> (C, N, d_out), one batched GEMM."""
    return _linear(x, [lin.weight for lin in linears], [lin.bias for lin in linears])


def kv_projection(inp: torch.Tensor, attns: Sequence[nn.Module], S: int) -> torch.Tensor:
    """Every (stream, module) key/value projection in one GEMM: inp (S*C, N, d), stream-major ->
    (S*C, N, 2d) with [k | v] on the last axis, the layout the packed attention op reads."""
    pairs = [(a.w_k[s], a.w_v[s]) for s in range(S) for a in attns]
    weights = [lin.weight for pair in pairs for lin in pair]  # k and v of each (stream, module)
    biases = [lin.bias for pair in pairs for lin in pair]
    d_out, d_in = weights[0].shape
    return _linear(inp, weights, biases, (len(pairs), 2 * d_out, d_in), (len(pairs), 2 * d_out))


def stacked_layer_norm(x: torch.Tensor, norms: Sequence[nn.LayerNorm]) -> torch.Tensor:
    """LayerNorm of x (C, ..., d) with the C norms' own affine parameters and eps: one Triton
    launch each way (``ops.layer_norm``), reading tied stacks of the parameters; under
    torch.compile, ``F.layer_norm`` and the affine in torch (what Inductor fuses)."""
    eps = norms[0].eps
    if any(n.eps != eps or tuple(n.normalized_shape) != (x.shape[-1],) for n in norms):
        raise ValueError("stacked_layer_norm: the norms must share eps and shape "
                         f"({[(n.eps, tuple(n.normalized_shape)) for n in norms]})")
    weights, biases = [n.weight for n in norms], [n.bias for n in norms]
    if _compiling() or x.shape[-1] > MAX_D:
        shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
        y = F.layer_norm(x, x.shape[-1:], eps=eps)
        return torch.addcmul(torch.stack(biases).view(shape), y, torch.stack(weights).view(shape))
    w, b = tied(weights), tied(biases)
    if w is None or b is None:  # during graph capture: stacked copies, their gradients through the stack
        return stacked_layer_norm_op(x, torch.stack(weights), torch.stack(biases), eps)
    return stacked_layer_norm_op(x, w, b, eps, (*weights, *biases))


def dropout(x: torch.Tensor, module: nn.Dropout) -> torch.Tensor:
    """``module``'s dropout (its rate and its training flag) applied to a stacked tensor, as one
    op each way on every device: ``native_dropout``, which is what ``F.dropout`` runs on a GPU
    (on the CPU it would draw, scale and multiply in three)."""
    if not module.training or module.p == 0.0:
        return x
    return torch.native_dropout(x, module.p, True)[0]
