"""Pure-PyTorch functional references: the spec the fused kernels are checked against.

These are the seams where the Triton ops drop in: the reference layers call exactly these
functions, and ``cmath_fast.ops`` provides drop-in replacements with the same arguments.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .._checks import check_lengths, check_streams, check_tensor


def key_padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid (non-padded) positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def cross_modal_attention_ref(
    q: torch.Tensor,
    ks: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    q_lengths: torch.Tensor,
    kv_lengths: Sequence[torch.Tensor],
    *,
    gates: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    dropout_mask: Optional[Sequence[torch.Tensor]] = None,
    joint: bool = False,
) -> torch.Tensor:
    """Multi-stream attention with one shared query.

    q: (B, Lq, H, dh). ks[s], vs[s]: (B, Lk_s, H, dh) for S streams. q_lengths: (B,) int;
    kv_lengths[s]: (B,) int. gates: (B, Lq, S, H) or None (every stream weighted 1).
    dropout_mask[s]: (B, H, Lq, Lk_s), the multiplier applied to the attention probabilities
    (0 for a dropped entry, 1/(1-p) for a kept one), or None.

    Each stream has its own softmax over its own valid keys (``joint=True``: one softmax over the
    union of every stream's valid keys, each stream's output being its share of that sum).
    Returns (B, Lq, S, H, dh). A query row with no valid key in a stream gets zeros for that
    stream; padded query rows are zero.
    """
    S = check_streams(q, ks, vs, kv_lengths, gates, dropout_mask)
    B, Lq, H, dh = q.shape
    check_lengths("q_lengths", q_lengths, B, Lq)
    scale = dh ** -0.5 if softmax_scale is None else float(softmax_scale)

    qh = q.transpose(1, 2)  # (B, H, Lq, dh)
    scores, masks = [], []
    for s in range(S):
        kh = ks[s].transpose(1, 2)
        scores.append(torch.matmul(qh, kh.transpose(-1, -2)) * scale)  # (B, H, Lq, Lk)
        masks.append(key_padding_mask(kv_lengths[s], ks[s].shape[1])[:, None, None, :])

    if joint:
        probs = _masked_softmax(torch.cat(scores, -1), torch.cat(masks, -1))
        probs = list(torch.split(probs, [k.shape[1] for k in ks], dim=-1))
    else:
        probs = [_masked_softmax(sc, m) for sc, m in zip(scores, masks)]

    outs = []
    for s in range(S):
        p = probs[s]
        if dropout_mask is not None:
            p = p * dropout_mask[s].to(p.dtype)
        outs.append(torch.matmul(p, vs[s].transpose(1, 2)).transpose(1, 2))  # (B, Lq, H, dh)
    out = torch.stack(outs, dim=2)  # (B, Lq, S, H, dh)
    if gates is not None:
        out = out * gates.to(out.dtype).unsqueeze(-1)
    q_valid = key_padding_mask(q_lengths, Lq)[:, :, None, None, None]
    return out * q_valid.to(out.dtype)


def _masked_softmax(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # Masked entries get the dtype's lowest finite value rather than -inf: a row with no valid key
    # then softmaxes to a uniform row, which the final multiply by `valid` turns into exact zeros
    # (never NaN, also in the gradient).
    filled = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=-1) * valid.to(scores.dtype)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis."""
    return -0.5 * torch.sum(1.0 + logvar - mu * mu - torch.exp(logvar), dim=-1)


def _sample_and_kl(mu, logvar, eps, row_mask, training):
    if training:
        if eps is None:
            eps = torch.randn_like(mu)
        elif eps.shape != mu.shape:
            raise ValueError(f"eps: expected shape {tuple(mu.shape)}, got {tuple(eps.shape)}")
        z = mu + torch.exp(0.5 * logvar) * eps.to(mu.dtype)
    else:
        z = mu
    kl = gaussian_kl(mu, logvar)
    if row_mask is not None:
        if row_mask.dim() != 1 or row_mask.shape[0] != mu.shape[0]:
            raise ValueError(
                f"row_mask: expected shape ({mu.shape[0]},), got {tuple(row_mask.shape)}")
        kl = torch.where(row_mask.to(torch.bool), kl, torch.zeros_like(kl))
    return z, kl


def variational_fusion_ref(
    e: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    *,
    eps: Optional[torch.Tensor] = None,
    row_mask: Optional[torch.Tensor] = None,
    training: bool = True,
    logvar_clamp: float = 10.0,
):
    """Reparameterised Gaussian latent.

    e: (N, d_in); weight: (2*d_z, d_in) (``nn.Linear`` layout); bias: (2*d_z,) or None.
    [mu | logvar] = e @ weight.T + bias; logvar clamped to [-clamp, clamp];
    z = mu + exp(logvar / 2) * eps (eps ~ N(0, I) unless given) in training, z = mu in eval;
    kl = -1/2 sum_k (1 + logvar - mu^2 - exp(logvar)), zero where ``row_mask`` is False.
    Returns (z (N, d_z), kl (N,)).
    """
    check_tensor("e", e, ndim=2, floating=True)
    check_tensor("weight", weight, ndim=2, floating=True, device=e.device)
    if weight.shape[1] != e.shape[1]:
        raise ValueError(f"weight: expected shape (2*d_z, d_in={e.shape[1]}), got {tuple(weight.shape)}")
    if weight.shape[0] % 2:
        raise ValueError(f"weight: first dim must be even (2*d_z), got {weight.shape[0]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    mu, logvar = F.linear(e, weight, bias).chunk(2, dim=-1)
    logvar = torch.clamp(logvar, -logvar_clamp, logvar_clamp)
    return _sample_and_kl(mu, logvar, eps, row_mask, training)


def poe_combine(mu: torch.Tensor, logvar: torch.Tensor, logvar_clamp: float = 10.0):
    """Product of M Gaussian experts (M, N, d_z) and the N(0, I) prior -> (mu, logvar) (N, d_z)."""
    logvar = torch.clamp(logvar, -logvar_clamp, logvar_clamp)
    inv_var = torch.exp(-logvar)
    precision = 1.0 + inv_var.sum(dim=0)
    mu_poe = (inv_var * mu).sum(dim=0) / precision
    return mu_poe, -torch.log(precision)


def poe_fusion_ref(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    eps: Optional[torch.Tensor] = None,
    row_mask: Optional[torch.Tensor] = None,
    training: bool = True,
    logvar_clamp: float = 10.0,
):
    """Product of experts: M experts' (mu, logvar) (M, N, d_z) combined with the N(0, I) prior
    (precision 1 + sum_m exp(-logvar_m), mean sum_m exp(-logvar_m) mu_m / precision), then the
    same sampling and KL as :func:`variational_fusion_ref`. Returns (z (N, d_z), kl (N,))."""
    check_tensor("mu", mu, ndim=3, floating=True)
    check_tensor("logvar", logvar, ndim=3, floating=True, dtype=mu.dtype, device=mu.device)
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar: expected shape {tuple(mu.shape)} as mu, got {tuple(logvar.shape)}")
    m, lv = poe_combine(mu, logvar, logvar_clamp)
    return _sample_and_kl(m, lv, eps, row_mask, training)
