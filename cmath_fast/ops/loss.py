"""``cmath_loss_fused``: the whole CMATH loss — both cross-entropies, the logit and feature
distillation, the reconstruction and KL terms and their weighted sum — in two kernels forward
(per-row terms and partial sums; one program adding them in a fixed order) and one backward; the
interface and the math of ``cmath_fast.losses.cmath_loss``."""

from __future__ import annotations

from typing import Dict, Optional

import torch

from .._checks import check_tensor
from ..kernels.loss import TERMS
from ..losses import beta_at, stack_values
from ..profiling import nvtx_range
from ._common import check_device
from ._library import op


class CMATHLossFunction(torch.autograd.Function):
    """(total, terms (10,) named by ``kernels.loss.TERMS``) of the rows; gradients to the logits,
    fine logits, fine features, per-row KL and the reconstruction loss."""

    @staticmethod
    def forward(ctx, z, f, fine, kl, rec, coarse, y, valid, cw, beta, hp):
        beta_value, tau, kd_scale, g_fine, g_kd, g_feat, l_rec, detach_teacher = hp
        total, terms = op("loss_fwd")(z, f, fine, kl, rec, coarse, y, valid, cw, beta, beta_value, tau, kd_scale,
                                      g_fine, g_kd, g_feat, l_rec)
        ctx.save_for_backward(z, f, fine, coarse, y, valid, cw, terms)
        ctx.hp = hp
        ctx.mark_non_differentiable(terms)
        ctx.set_materialize_grads(False)  # no zeros for the terms' (absent) gradient
        return total, terms

    @staticmethod
    def backward(ctx, dtotal, _dterms):
        z, f, fine, coarse, y, valid, cw, terms = ctx.saved_tensors
        _, tau, kd_scale, g_fine, g_kd, g_feat, l_rec, detach_teacher = ctx.hp
        need = ctx.needs_input_grad
        with nvtx_range("op/cmath_loss", "bwd"):
            dz, df, dfine, dkl, drec = op("loss_bwd")(
                dtotal.float().contiguous(), z, f, fine, coarse, y, valid, cw, terms, tau, kd_scale, g_fine, g_kd,
                g_feat, l_rec, not detach_teacher, need[2], need[3], need[4])

        def some(t):
            return t if t.numel() or t.dim() == 0 else None
        return (dz, df, some(dfine) if need[2] else None, some(dkl) if need[3] else None,
                some(drec) if need[4] else None, None, None, None, None, None, None)


def cmath_loss_fused(cfg, out, labels: torch.Tensor, class_weights: Optional[torch.Tensor],
                     epoch: Optional[int] = None, beta: Optional[torch.Tensor] = None):
    """(total loss, dict of every term detached, with ``beta`` and ``total``): what
    ``cmath_fast.losses.cmath_loss`` returns, from one fused op. ``out``: a forward output on
    padded or packed rows (``mask`` its valid rows); ``labels`` shaped like ``out.mask``."""
    logits, mask = out.logits, out.mask
    check_tensor("logits", logits, floating=True)
    check_device("logits", logits)
    K = logits.shape[-1]
    rows = tuple(mask.shape)
    if tuple(logits.shape[:-1]) != rows or tuple(labels.shape) != rows:
        raise ValueError(f"cmath_loss_fused: logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and "
                         f"mask {rows} disagree")
    f = stack_values(out.fine_logits)
    fine = stack_values(out.fine)
    C, d = f.shape[0], fine.shape[-1]
    N = mask.numel()
    beta_value = beta_at(cfg, epoch) if beta is None else 0.0
    if beta is not None:
        beta = beta.reshape(()).float()
    kd_scale = cfg.tau * cfg.tau if cfg.tau_squared else 1.0
    hp = (float(beta_value), float(cfg.tau), float(kd_scale), float(cfg.gamma_fine), float(cfg.gamma_kd),
          float(cfg.gamma_feat), float(cfg.lambda_rec), bool(cfg.detach_teacher))
    rec = out.rec_loss
    rec = rec.reshape(()).float() if rec is not None else None
    kl = out.kl.reshape(N).float() if out.kl is not None else None
    with nvtx_range("op/cmath_loss"):
        total, terms = CMATHLossFunction.apply(
            logits.reshape(N, K), f.reshape(C, N, K), fine.reshape(C, N, d), kl, rec,
            out.coarse.detach().reshape(N, d), labels.reshape(N).long(), mask.reshape(N), class_weights, beta, hp)
    names = TERMS[:8]
    named: Dict[str, torch.Tensor] = {name: terms[i] for i, name in enumerate(names)}
    return total, named
