"""The CMATH loss, once, for every implementation: classification, hierarchical distillation,
reconstruction and KL terms, free of host synchronisation (no boolean indexing, no ``.item()``).

    L = CE(coarse) + gamma_fine sum_c CE(fine_c) + gamma_kd KD_logit + gamma_feat KD_feat
        + lambda_rec L_rec + beta(epoch) L_KL

CE is over valid utterances, weighted by the optional class weights (a weighted mean, as
``F.cross_entropy(weight=...)``); KD_logit = sum_c KL(softmax(y_f / tau) || softmax(y_c / tau)),
times tau^2 when ``tau_squared``, the teacher y_f detached when ``detach_teacher``; KD_feat =
sum_c mean(1 - cos(F_c, sg(H_f))).
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F

from .config import CMATHConfig


class StackedDict(dict):
    """{name: tensor} whose C values are the slices of one stacked tensor ``stacked`` (C first),
    in order: what the fused implementation returns, so that its consumers need not stack (copy)
    them again."""

    def __init__(self, names, stacked: torch.Tensor):
        super().__init__(zip(names, stacked.unbind(0)))
        self.stacked = stacked


def stack_values(d: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The values of ``d`` stacked on a new first axis: no copy for a ``StackedDict``."""
    stacked = getattr(d, "stacked", None)
    return stacked if stacked is not None else torch.stack(list(d.values()))


def beta_at(cfg: CMATHConfig, epoch: Optional[int]) -> float:
    """beta warmed up linearly from 0 over ``beta_warmup_epochs`` (full beta when epoch is None)."""
    if epoch is None or cfg.beta_warmup_epochs == 0:
        return cfg.beta
    return cfg.beta * min(1.0, epoch / cfg.beta_warmup_epochs)


def _nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-position negative log-likelihood of the labels y (B, L); logits (..., B, L, K)."""
    lp = F.log_softmax(logits.float(), dim=-1)
    return -lp.gather(-1, y.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1)


def classification_rows_ref(logits: torch.Tensor, fine_logits: torch.Tensor, y: torch.Tensor, tau: float,
                            detach_teacher: bool):
    """Per-utterance classification terms, unweighted: (ce, fine_ce summed over the heads,
    kd_logit summed over the heads), each shaped like y. logits (B, L, K); fine_logits (C, B, L,
    K); y (B, L) in [0, K)."""
    ce = _nll(logits, y)
    fine_ce = _nll(fine_logits, y).sum(0)
    teacher = logits.detach() if detach_teacher else logits
    log_p_t = F.log_softmax(teacher.float() / tau, dim=-1)
    log_p_s = F.log_softmax(fine_logits.float() / tau, dim=-1)
    kd = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).sum(0)
    return ce, fine_ce, kd


def classification_terms(cfg: CMATHConfig, out, labels: torch.Tensor,
                         class_weights: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """ce, fine_ce (summed over the centrals), kd_logit and kd_feat of a forward output."""
    mask = out.mask
    m = mask.to(torch.float32)
    n = m.sum().clamp_min(1.0)
    fine_logits = stack_values(out.fine_logits)  # (C, B, L, K)
    # Labels at padded positions may be anything: read them as class 0, then weigh them 0.
    y = torch.where(mask, labels, 0).long()
    w = class_weights[y] * m if class_weights is not None else m
    w_sum = w.sum().clamp_min(1e-12)
    ce, fine_ce, kd = classification_rows_ref(out.logits, fine_logits, y, cfg.tau, cfg.detach_teacher)
    # weighted means (as F.cross_entropy(weight=...)); the C fine heads' means summed
    terms = {"ce": (ce * w).sum() / w_sum, "fine_ce": (fine_ce * w).sum() / w_sum}
    terms["kd_logit"] = (kd * m).sum() / n * (cfg.tau * cfg.tau if cfg.tau_squared else 1.0)

    fine = stack_values(out.fine).float()
    cos = F.cosine_similarity(fine, out.coarse.detach().float()[None], dim=-1)
    terms["kd_feat"] = ((1.0 - cos) * m).sum() / n
    return terms


def weighted_ce(cfg: CMATHConfig, out, labels: torch.Tensor, class_weights: Optional[torch.Tensor]) -> torch.Tensor:
    """CE(coarse) + gamma_fine sum_c CE(fine_c) of a forward output (padded layout), as in the
    total: the part of the loss normalised by the sum of the class weights (data-parallel training
    rescales it apart from the rest: ``cmath_fast.distributed.loss_scales``)."""
    mask = out.mask
    m = mask.to(torch.float32)
    y = torch.where(mask, labels, 0).long()
    w = class_weights[y] * m if class_weights is not None else m
    w_sum = w.sum().clamp_min(1e-12)
    ce, fine_ce, _ = classification_rows_ref(out.logits, stack_values(out.fine_logits), y, cfg.tau, cfg.detach_teacher)
    return ((ce * w).sum() + cfg.gamma_fine * (fine_ce * w).sum()) / w_sum


def cmath_loss(cfg: CMATHConfig, out, labels: torch.Tensor, class_weights: Optional[torch.Tensor],
               epoch: Optional[int] = None, beta: Optional[torch.Tensor] = None):
    """(total loss, dict of every term detached, with ``beta`` and ``total``). ``beta``: the KL
    weight as a device tensor (graph-safe: no host value baked into a captured step), else
    ``beta_at(cfg, epoch)``. The fused implementation computes the same in one op
    (``cmath_fast.ops.loss.cmath_loss_fused``)."""
    terms = classification_terms(cfg, out, labels, class_weights)
    terms["rec"] = out.rec_loss.float()
    terms["kl"] = out.kl_loss.float()
    kl_weight = beta_at(cfg, epoch) if beta is None else beta  # a float, or the device tensor
    total = (terms["ce"] + cfg.gamma_fine * terms["fine_ce"] + cfg.gamma_kd * terms["kd_logit"]
             + cfg.gamma_feat * terms["kd_feat"] + cfg.lambda_rec * terms["rec"] + kl_weight * terms["kl"])
    terms = {k: v.detach() for k, v in terms.items()}
    terms["beta"] = torch.tensor(kl_weight) if beta is None else beta.detach()
    terms["total"] = total.detach()
    return total, terms
