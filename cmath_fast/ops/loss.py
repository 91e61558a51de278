"""``classification_rows``: the CMATH loss's per-utterance classification terms (cross-entropy of
the coarse head, of every fine head, and the logit distillation) in one fused kernel each way;
the interface of ``cmath_fast.losses.classification_rows_ref``."""

from __future__ import annotations

from typing import Tuple

import torch

from .._checks import check_tensor
from ..profiling import nvtx_range
from ._common import check_device
from ._library import op


class ClassificationRowsFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, f, y, tau, detach_teacher):
        ce, fce, kd = op("cls_fwd")(z, f, y, tau)
        ctx.save_for_backward(z, f, y)
        ctx.cfg = (tau, detach_teacher)
        return ce, fce, kd

    @staticmethod
    def backward(ctx, dce, dfce, dkd):
        z, f, y = ctx.saved_tensors
        tau, detach_teacher = ctx.cfg
        zeros = None

        def grad(g):
            nonlocal zeros
            if g is not None:
                return g.float()
            if zeros is None:
                zeros = z.new_zeros(z.shape[0], dtype=torch.float32)
            return zeros
        with nvtx_range("op/classification_rows", "bwd"):
            dz, df = op("cls_bwd")(z, f, y, grad(dce), grad(dfce), grad(dkd), tau, not detach_teacher)
        return dz, df, None, None, None


def classification_rows(logits: torch.Tensor, fine_logits: torch.Tensor, y: torch.Tensor, tau: float,
                        detach_teacher: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (..., K) coarse, fine_logits (C, ..., K), y (...) labels in [0, K) -> (ce, fine_ce
    summed over the heads, kd_logit summed over the heads), each (...) fp32, unweighted.
    ``detach_teacher``: no gradient into the coarse logits through the distillation."""
    check_tensor("logits", logits, floating=True)
    check_device("logits", logits)
    K = logits.shape[-1]
    if tuple(fine_logits.shape[1:]) != tuple(logits.shape):
        raise ValueError(f"fine_logits: expected (C, {', '.join(map(str, logits.shape))}), "
                         f"got {tuple(fine_logits.shape)}")
    if tuple(y.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"y: expected shape {tuple(logits.shape[:-1])}, got {tuple(y.shape)}")
    if not tau > 0:
        raise ValueError(f"tau: expected > 0, got {tau}")
    shape = y.shape
    z = logits.reshape(-1, K)
    f = fine_logits.reshape(fine_logits.shape[0], -1, K)
    with nvtx_range("op/classification_rows"):
        ce, fce, kd = ClassificationRowsFunction.apply(z, f, y.reshape(-1).long(), float(tau), bool(detach_teacher))
    return ce.view(shape), fce.view(shape), kd.view(shape)
