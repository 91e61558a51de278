"""``variational_fusion`` and ``poe_fusion``: the fused Triton ops behind the interfaces of
``variational_fusion_ref`` and ``poe_fusion_ref``."""

from __future__ import annotations

from typing import Optional

import torch

from .._checks import check_tensor
from ..profiling import nvtx_range
from ._common import autocast_inputs, check_device, kernel_dtype, mm_fp32, philox_seed
from ._library import op


def _check_rows(name, t, n, device):
    if t is None:
        return None
    check_tensor(name, t, device=device)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {tuple(t.shape)}")
    return t.to(torch.bool).contiguous()


def _check_eps(eps, shape, device):
    if eps is None:
        return None
    check_tensor("eps", eps, floating=True, device=device)
    if tuple(eps.shape) != tuple(shape):
        raise ValueError(f"eps: expected shape {tuple(shape)}, got {tuple(eps.shape)}")
    return eps.contiguous()


class VariationalFusionFunction(torch.autograd.Function):
    """The weight and bias come in their own dtype (fp32 master weights under autocast) and are
    cast to e's inside (the copy autocast would make); their gradients are computed with fp32
    results and handed back in their own dtype: no bf16 round trip for an fp32 master weight."""

    @staticmethod
    def forward(ctx, e, weight, bias, eps, row_mask, training, logvar_clamp, seed, return_eps):
        ctx.set_materialize_grads(False)
        needs = any(ctx.needs_input_grad[:3])
        w = weight if weight.dtype == e.dtype else weight.detach().to(e.dtype)
        b = bias if bias is None or bias.dtype == e.dtype else bias.detach().to(e.dtype)
        z, kl, h, drawn = op("vf_fwd")(e, w, b, eps, row_mask, seed, training, logvar_clamp,
                                       return_eps, needs)
        ctx.save_for_backward(e, w, h, eps, row_mask, seed)
        ctx.cfg = (training, logvar_clamp, bias is not None)
        ctx.dtypes = (weight.dtype, bias.dtype if bias is not None else None)
        kl = kl.to(e.dtype)
        if training and eps is None and return_eps:
            ctx.mark_non_differentiable(drawn)
            return z, kl, drawn
        return z, kl

    @staticmethod
    def backward(ctx, dz, dkl, *_):
        e, weight, h, eps, row_mask, seed = ctx.saved_tensors
        training, logvar_clamp, has_bias = ctx.cfg
        if dz is None and dkl is None:
            return (None,) * 9
        dz = dz.contiguous() if dz is not None else None
        dkl = dkl.contiguous() if dkl is not None else None
        dh = op("vf_bwd")(h, dz, dkl, eps, row_mask, seed, training, logvar_clamp, e.dtype)
        w_dtype, b_dtype = ctx.dtypes
        de = dh @ weight if ctx.needs_input_grad[0] else None
        dw = mm_fp32(dh.t(), e).to(w_dtype) if ctx.needs_input_grad[1] else None
        db = dh.sum(0, dtype=torch.float32).to(b_dtype) if has_bias and ctx.needs_input_grad[2] else None
        return de, dw, db, None, None, None, None, None, None


def variational_fusion(e: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], *,
                       eps: Optional[torch.Tensor] = None, row_mask: Optional[torch.Tensor] = None,
                       training: bool = True, logvar_clamp: float = 10.0, return_eps: bool = False):
    """Fused ``[mu | logvar] = e W^T + b`` -> clamp -> ``z = mu + exp(logvar/2) eps`` -> per-row KL,
    with the arguments and results of :func:`cmath_fast.reference.variational_fusion_ref`.

    ``eps=None`` in training draws the noise inside the kernel (Philox, its seed drawn on e's
    device from torch's generator, so ``torch.manual_seed`` reproduces it, and never read on the
    host) and regenerates it in backward; it is never stored, unless ``return_eps=True`` (debug),
    which also returns it: (z, kl, eps). Under ``torch.autocast`` e is cast to the autocast dtype,
    as matmul-class ops cast their inputs; the weight and bias are read in e's dtype, cast inside
    the op, and their gradients handed back in their own dtype (computed with fp32 results: an fp32
    master weight gets its gradient without a bf16 round trip).
    """
    e, = autocast_inputs(e)
    check_tensor("e", e, ndim=2, floating=True)
    kernel_dtype("e", e)
    check_device("e", e)
    check_tensor("weight", weight, ndim=2, floating=True, device=e.device)
    N, d_in = e.shape
    if weight.shape[1] != d_in:
        raise ValueError(f"weight: expected shape (2*d_z, d_in={d_in}), got {tuple(weight.shape)}")
    if weight.shape[0] % 2:
        raise ValueError(f"weight: first dim must be even (2*d_z), got {weight.shape[0]}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, floating=True, device=e.device)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
        bias = bias.contiguous()
    d_z = weight.shape[0] // 2
    eps = _check_eps(eps, (N, d_z), e.device) if training else None
    row_mask = _check_rows("row_mask", row_mask, N, e.device)
    if e.stride(-1) != 1:
        e = e.contiguous()
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    seed = philox_seed(e.device) if training and eps is None else None
    with nvtx_range("op/variational_fusion"):
        out = VariationalFusionFunction.apply(e, weight, bias, eps, row_mask, bool(training),
                                              float(logvar_clamp), seed, bool(return_eps))
    if return_eps and len(out) == 2:  # the noise was given (or eval): return it as it came
        return out[0], out[1], eps
    return out


class PoEFusionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mu, logvar, eps, row_mask, training, logvar_clamp, seed, return_eps):
        ctx.set_materialize_grads(False)
        z, kl, drawn = op("poe_fwd")(mu, logvar, eps, row_mask, seed, training, logvar_clamp, return_eps)
        ctx.save_for_backward(mu, logvar, eps, row_mask, seed)
        ctx.cfg = (training, logvar_clamp)
        kl = kl.to(mu.dtype)
        if training and eps is None and return_eps:
            ctx.mark_non_differentiable(drawn)
            return z, kl, drawn
        return z, kl

    @staticmethod
    def backward(ctx, dz, dkl, *_):
        mu, logvar, eps, row_mask, seed = ctx.saved_tensors
        training, logvar_clamp = ctx.cfg
        if dz is None and dkl is None:
            return (None,) * 8
        dmu, dlv = op("poe_bwd")(mu, logvar, dz.contiguous() if dz is not None else None,
                                 dkl.contiguous() if dkl is not None else None, eps, row_mask, seed,
                                 training, logvar_clamp)
        return dmu, dlv, None, None, None, None, None, None


def poe_fusion(mu: torch.Tensor, logvar: torch.Tensor, *, eps: Optional[torch.Tensor] = None,
               row_mask: Optional[torch.Tensor] = None, training: bool = True,
               logvar_clamp: float = 10.0, return_eps: bool = False):
    """Fused product of M Gaussian experts (M, N, d_z) and the N(0, I) prior, then sampling and
    KL: the arguments and results of :func:`cmath_fast.reference.poe_fusion_ref`."""
    mu, logvar = autocast_inputs(mu, logvar)
    check_tensor("mu", mu, ndim=3, floating=True)
    kernel_dtype("mu", mu)
    check_device("mu", mu)
    check_tensor("logvar", logvar, ndim=3, dtype=mu.dtype, device=mu.device)
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar: expected shape {tuple(mu.shape)} as mu, got {tuple(logvar.shape)}")
    M, N, d_z = mu.shape
    eps = _check_eps(eps, (N, d_z), mu.device) if training else None
    row_mask = _check_rows("row_mask", row_mask, N, mu.device)
    seed = philox_seed(mu.device) if training and eps is None else None
    with nvtx_range("op/poe_fusion"):
        out = PoEFusionFunction.apply(mu.contiguous(), logvar.contiguous(), eps, row_mask,
                                      bool(training), float(logvar_clamp), seed, bool(return_eps))
    if return_eps and len(out) == 2:  # the noise was given (or eval): return it as it came
        return out[0], out[1], eps
    return out
