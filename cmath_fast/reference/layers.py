"""Reference layers of CMATH (pure PyTorch): the modules own the parameters and their forwards are
the spec. The fused implementation (``cmath_fast.impl.triton_impl``) computes with the same
modules, reading every hyper-parameter from them, so a state_dict moves between backends unchanged.

Everything is batch-first and right-padded: (B, L, ...) with a dialogue's valid utterances in the
prefix ``[:lengths[b]]``. ``mask`` is the (B, L) bool of valid positions.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import MODALITIES, CMATHConfig
from .functional import (cross_modal_attention_ref, key_padding_mask, poe_fusion_ref,
                         variational_fusion_ref)


ACTIVATIONS: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
}


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) sinusoidal position codes (sin on even channels, cos on odd ones)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32)
                     * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device, dtype=torch.float32)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe.to(dtype)


class ModalityReconstruction(nn.Module):
    """U-Net of 1D convolutions over the utterance axis: the compressed code Z_m and the
    reconstruction X_hat_m of the standardised input.

    encoder: Conv(D->2d, k) GELU Dropout; Conv(2d->d, k) GELU = Z
    decoder: Conv(d->2d, k) GELU; with ``skip``, concat the encoder's first activation;
             Conv(4d->D, 1) (without skip: Conv(2d->D, 1), decoding from Z alone) = X_hat
    Padded positions are zeroed after every convolution so that nothing crosses the padding.
    """

    def __init__(self, in_dim: int, d_model: int, kernel_size: int = 3, dropout: float = 0.0,
                 skip: bool = True):
        super().__init__()
        self.skip = skip
        pad = kernel_size // 2
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.enc1 = nn.Conv1d(in_dim, 2 * d_model, kernel_size, padding=pad)
        self.enc2 = nn.Conv1d(2 * d_model, d_model, kernel_size, padding=pad)
        self.dec1 = nn.Conv1d(d_model, 2 * d_model, kernel_size, padding=pad)
        self.dec2 = nn.Conv1d((4 if skip else 2) * d_model, in_dim, 1)
        self.dropout = nn.Dropout(dropout)

    def standardise(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = (x - self.feat_mean) / self.feat_std
        return x * mask[..., None].to(x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        """x: (B, L, D) raw features -> (z (B, L, d), x_hat (B, L, D), x_std (B, L, D))."""
        x_std = self.standardise(x, mask)
        m = mask[:, None, :].to(x.dtype)  # (B, 1, L), channel-first
        h = x_std.transpose(1, 2)
        skip = F.gelu(self.enc1(h)) * m
        z = F.gelu(self.enc2(self.dropout(skip))) * m
        u = F.gelu(self.dec1(z)) * m
        x_hat = self.dec2(torch.cat([u, skip], dim=1) if self.skip else u) * m
        return z.transpose(1, 2), x_hat.transpose(1, 2), x_std


class ModalityProjection(ModalityReconstruction):
    """Ablation of the reconstruction: standardise, then one linear map to d (no decoder)."""

    def __init__(self, in_dim: int, d_model: int, kernel_size: int = 3, dropout: float = 0.0,
                 skip: bool = True):
        nn.Module.__init__(self)
        self.register_buffer("feat_mean", torch.zeros(in_dim))
        self.register_buffer("feat_std", torch.ones(in_dim))
        self.proj = nn.Linear(in_dim, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor):
        x_std = self.standardise(x, mask)
        return self.proj(x_std) * mask[..., None].to(x.dtype), None, x_std


class CrossModalAttention(nn.Module):
    """Asymmetric multi-stream attention of one CMA layer (pre-LN).

    The central stream's normalised state gives ONE query shared by every stream; each stream
    s has its own key/value projections; gates g_s = sigmoid(W_g^s x + b) per utterance and head
    weigh the auxiliary streams (the central stream's gate is 1). Returns W_o [O_c; g O_a1; g O_a2].
    """

    def __init__(self, d_model: int, num_heads: int, num_streams: int, gated: bool,
                 attn_dropout: float = 0.0, joint: bool = False):
        super().__init__()
        self.d_model, self.num_heads, self.num_streams = d_model, num_heads, num_streams
        self.head_dim = d_model // num_heads
        self.gated = gated and num_streams > 1
        self.attn_dropout = attn_dropout
        # joint: one softmax over the union of every stream's keys (ablation of the per-stream one)
        self.joint = joint
        self.norm_q = nn.LayerNorm(d_model)
        # Normalisation of the auxiliary streams (the central stream shares norm_q).
        self.norm_kv = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_streams - 1))
        self.w_q = nn.Linear(d_model, d_model)
        self.w_k = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_streams))
        self.w_v = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(num_streams))
        if self.gated:
            self.w_g = nn.Linear(d_model, (num_streams - 1) * num_heads)
        self.w_o = nn.Linear(num_streams * d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.num_heads, self.head_dim)

    def gates(self, xn: torch.Tensor) -> Optional[torch.Tensor]:
        """(B, L, S, H) gates from the normalised central state, or None when ungated."""
        if not self.gated:
            return None
        B, L, _ = xn.shape
        aux = torch.sigmoid(self.w_g(xn)).view(B, L, self.num_streams - 1, self.num_heads)
        return torch.cat([torch.ones_like(aux[:, :, :1]), aux], dim=2)

    def dropout_masks(self, B: int, Lq: int, lks: Sequence[int], device, dtype):
        if not (self.training and self.attn_dropout > 0):
            return None
        keep = 1.0 - self.attn_dropout
        return [torch.bernoulli(torch.full((B, self.num_heads, Lq, lk), keep, device=device))
                .to(dtype) / keep for lk in lks]


    def forward(self, x: torch.Tensor, aux: Sequence[torch.Tensor], lengths: torch.Tensor):
        """x: (B, L, d) central state; aux: S-1 auxiliary streams (B, L, d)."""
        B, L, _ = x.shape
        xn = self.norm_q(x)
        streams = [xn] + [norm(h) for norm, h in zip(self.norm_kv, aux)]
        q = self._heads(self.w_q(xn))
        ks = [self._heads(w(s)) for w, s in zip(self.w_k, streams)]
        vs = [self._heads(w(s)) for w, s in zip(self.w_v, streams)]
        masks = self.dropout_masks(B, L, [L] * self.num_streams, x.device, x.dtype)
        o = cross_modal_attention_ref(q, ks, vs, lengths, [lengths] * len(ks), gates=self.gates(xn),
                                      dropout_mask=masks, joint=self.joint)  # (B, L, S, H, dh)
        return self.w_o(o.reshape(B, L, self.num_streams * self.d_model))


class FeedForward(nn.Module):
    """fc2(Drop(act(fc1(LN(x))))); ``activation`` names an entry of ACTIVATIONS."""

    def __init__(self, d_model: int, mult: int, dropout: float, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mult * d_model)
        self.fc2 = nn.Linear(mult * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(self.norm(x)))))


class CMALayer(nn.Module):
    """x = x + Drop(attention(LN(x), aux)); x = x + Drop(FFN(LN(x)))."""

    def __init__(self, cfg: CMATHConfig, num_streams: int):
        super().__init__()
        self.attn = CrossModalAttention(cfg.d_model, cfg.num_heads, num_streams,
                                        gated=cfg.cross_gate == "gate", attn_dropout=cfg.attn_dropout,
                                        joint=cfg.joint_softmax)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn_mult, cfg.dropout, cfg.ffn_activation)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, aux, lengths):
        x = x + self.dropout(self.attn(x, aux, lengths))
        return x + self.dropout(self.ffn(x))


class CMATransformer(nn.Module):
    """The CMA-Transformer of one central modality: N layers, then a final LayerNorm = F_c."""

    def __init__(self, cfg: CMATHConfig, num_streams: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(CMALayer(cfg, num_streams) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x, aux, lengths):
        for layer in self.layers:
            x = layer(x, aux, lengths)
        return self.norm(x)


def stream_order(central: str) -> List[str]:
    """The central modality first, then the auxiliaries in (t, a, v) order."""
    return [central] + [m for m in MODALITIES if m != central]


class VariationalFusion(nn.Module):
    """Fuses the fine-grained F_c into the coarse-grained H_f.

    gaussian: e = GELU(W_e [F_c...]); [mu|logvar] = W e; z = reparameterise; H_f = LN(W_z z)
    poe:      [mu_c|logvar_c] = W_c F_c per central; product of experts with N(0, I); same tail
    concat:   H_f = LN(W_z GELU(W_e [F_c...])), no latent, no KL
    """

    def __init__(self, cfg: CMATHConfig):
        super().__init__()
        self.kind = cfg.fusion
        self.logvar_clamp = cfg.logvar_clamp
        d, dz, n = cfg.d_model, cfg.d_z, len(cfg.centrals)
        if self.kind == "poe":
            self.experts = nn.ModuleList(nn.Linear(d, 2 * dz) for _ in range(n))
        else:
            self.w_e = nn.Linear(n * d, d)
            if self.kind == "gaussian":
                self.w_musigma = nn.Linear(d, 2 * dz)
        self.w_z = nn.Linear(d if self.kind == "concat" else dz, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, fine: Sequence[torch.Tensor], mask: torch.Tensor,
                eps: Optional[torch.Tensor] = None, *, gaussian=variational_fusion_ref,
                poe=poe_fusion_ref):
        """fine: list of (B, L, d); mask (B, L) -> (H_f (B, L, d), kl (B, L)).

        ``gaussian`` and ``poe`` compute the latent: the references by default; the fused
        implementation passes the Triton ops, which take the same arguments."""
        B, L, d = fine[0].shape
        rows = mask.reshape(B * L)
        if eps is not None:
            eps = eps.reshape(B * L, -1)
        if self.kind == "poe":
            ml = [ex(f).reshape(B * L, -1).chunk(2, dim=-1) for ex, f in zip(self.experts, fine)]
            mu = torch.stack([a for a, _ in ml])
            logvar = torch.stack([b for _, b in ml])
            z, kl = poe(mu, logvar, eps=eps, row_mask=rows, training=self.training,
                        logvar_clamp=self.logvar_clamp)
        else:
            e = F.gelu(self.w_e(torch.cat(list(fine), dim=-1))).reshape(B * L, d)
            if self.kind == "concat":
                z, kl = e, torch.zeros(B * L, device=e.device, dtype=e.dtype)
            else:
                z, kl = gaussian(e, self.w_musigma.weight, self.w_musigma.bias, eps=eps, row_mask=rows,
                                 training=self.training, logvar_clamp=self.logvar_clamp)
        h = self.norm(self.w_z(z)).reshape(B, L, d)
        return h, kl.reshape(B, L)


class FineHead(nn.Sequential):
    """The fine head of one central: Linear(Dropout(ReLU(F_c))). A Sequential, so that checkpoints
    keep their keys (``fine_heads.<c>.2.weight``); the parts are reached by name."""

    def __init__(self, d_model: int, num_classes: int, dropout: float):
        super().__init__(nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_model, num_classes))

    @property
    def act(self) -> nn.Module:
        return self[0]

    @property
    def dropout(self) -> nn.Dropout:
        return self[1]

    @property
    def proj(self) -> nn.Linear:
        return self[2]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` (B, L) over the True positions of ``mask``; 0 when there are none."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp_min(1.0)


def padding_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return key_padding_mask(lengths, max_len)


__all__ = [
    "ACTIVATIONS", "sinusoidal_positions", "ModalityReconstruction", "ModalityProjection",
    "CrossModalAttention", "FeedForward", "CMALayer", "CMATransformer", "VariationalFusion",
    "FineHead", "stream_order", "masked_mean", "padding_mask",
]
