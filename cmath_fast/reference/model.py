"""The reference CMATH model (pure PyTorch): the spec of every fused path.

Forward: per modality, reconstruction U-Net -> code Z_m; embeddings H_m = Drop(Z_m + position +
speaker); one CMA-Transformer per central modality (the other two auxiliary) -> F_c; variational
fusion of the F_c -> H_f; fine heads on each F_c and the coarse head on H_f.
Loss: CE(coarse) + gamma_fine sum_c CE(fine_c) + gamma_kd KD_logit + gamma_feat KD_feat
      + lambda_rec L_rec + beta(epoch) L_KL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._checks import check_index_range, check_lengths, check_tensor
from ..profiling import nvtx_range
from ..config import MODALITIES, MODALITY_NAMES, CMATHConfig
from .layers import (CMALayer, CMATransformer, ModalityProjection, ModalityReconstruction,
                     VariationalFusion, masked_mean, padding_mask, sinusoidal_positions,
                     stream_order)


@dataclass
class CMATHOutput:
    """What one forward pass returns.

    logits (B, L, C): the coarse head, the model's prediction; fine_logits[c] (B, L, C) per
    central; fine[c] (B, L, d) the fine-grained F_c; coarse (B, L, d) the fused H_f;
    mask (B, L) valid utterances; rec_loss and kl_loss scalars; kl (B, L) per utterance.
    """

    logits: torch.Tensor
    fine_logits: Dict[str, torch.Tensor]
    fine: Dict[str, torch.Tensor]
    coarse: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    rec_loss: torch.Tensor
    kl: torch.Tensor
    kl_loss: torch.Tensor
    extras: dict = field(default_factory=dict)

    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


class CMATHReference(nn.Module):
    """CMATH in plain PyTorch. ``forward(text, audio, visual, speakers, lengths)``."""

    def __init__(self, cfg: CMATHConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.d_model
        enc = ModalityReconstruction if cfg.reconstruction else ModalityProjection
        dims = cfg.feature_dims()
        self.encoders = nn.ModuleDict(
            {m: enc(dims[m], d, cfg.rec_kernel_size, cfg.dropout) for m in MODALITIES})
        # One extra speaker row for padded positions, kept at zero.
        self.speaker_embedding = nn.Embedding(cfg.num_speakers + 1, d, padding_idx=cfg.num_speakers)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        if cfg.aux_self_attention:
            self.aux_encoders = nn.ModuleDict({m: CMALayer(cfg, num_streams=1) for m in MODALITIES})
        self.cma = nn.ModuleDict({c: CMATransformer(cfg, num_streams=3) for c in cfg.centrals})
        self.fusion = VariationalFusion(cfg)
        self.fine_heads = nn.ModuleDict({
            c: nn.Sequential(nn.ReLU(), nn.Dropout(cfg.dropout), nn.Linear(d, cfg.num_classes))
            for c in cfg.centrals})
        self.coarse_head = nn.Linear(d, cfg.num_classes)
        if cfg.class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(cfg.class_weights, dtype=torch.float32))
        else:
            self.class_weights = None

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, text, audio, visual, speakers, lengths) -> None:
        cfg = self.cfg
        feats = {"t": text, "a": audio, "v": visual}
        dims = cfg.feature_dims()
        B = L = None
        for m, x in feats.items():
            name = MODALITY_NAMES[m]
            check_tensor(name, x, ndim=3, floating=True)
            if x.shape[-1] != dims[m]:
                raise ValueError(
                    f"{name}: expected feature dim {dims[m]} (preset {cfg.name!r}), got {x.shape[-1]}; "
                    f"build the config with {name}_dim={x.shape[-1]} if your features differ")
            if B is None:
                B, L = x.shape[0], x.shape[1]
            elif x.shape[:2] != (B, L):
                raise ValueError(
                    f"{name}: expected batch and length (B, L) = {(B, L)} as text, got {tuple(x.shape[:2])}")
        check_lengths("lengths", lengths, B, L)
        check_tensor("speakers", speakers, ndim=2, integer=True)
        if tuple(speakers.shape) != (B, L):
            raise ValueError(f"speakers: expected shape {(B, L)}, got {tuple(speakers.shape)}")
        check_index_range("speakers", speakers, padding_mask(lengths, L), cfg.num_speakers)

    def set_feature_stats(self, stats: Dict[str, tuple]) -> None:
        """Store per-feature (mean, std) of the training split for the input standardisation."""
        for m, (mean, std) in stats.items():
            enc = self.encoders[m]
            mean = torch.as_tensor(mean, dtype=enc.feat_mean.dtype)
            std = torch.as_tensor(std, dtype=enc.feat_std.dtype).clamp_min(1e-6)
            if mean.shape != enc.feat_mean.shape or std.shape != enc.feat_std.shape:
                raise ValueError(
                    f"{MODALITY_NAMES[m]} stats: expected shape {tuple(enc.feat_mean.shape)}, "
                    f"got mean {tuple(mean.shape)} and std {tuple(std.shape)}")
            enc.feat_mean.copy_(mean)
            enc.feat_std.copy_(std)

    # ------------------------------------------------------------------ forward
    def encode(self, feats, speakers, mask, lengths):
        """Reconstruction + embeddings -> (H_m dict (B, L, d), L_rec)."""
        B, L = mask.shape
        d = self.cfg.d_model
        n_valid = mask.sum().clamp_min(1).to(torch.float32)
        codes, rec = {}, feats["t"].new_zeros(())
        with nvtx_range("reconstruction"):
            for m in MODALITIES:
                z, x_hat, x_std = self.encoders[m](feats[m], mask)
                if x_hat is not None:
                    rec = rec + (x_hat - x_std).pow(2).sum() / (n_valid * x_std.shape[-1])
                codes[m] = z
        with nvtx_range("embed"):
            pos = sinusoidal_positions(L, d, device=mask.device, dtype=feats["t"].dtype)
            spk = torch.where(mask, speakers.long(), torch.full_like(speakers.long(), self.cfg.num_speakers))
            spk = self.speaker_embedding(spk)
            hidden = {m: self.embed_dropout(z + pos + spk) for m, z in codes.items()}
            if self.cfg.aux_self_attention:
                hidden = {m: self.aux_encoders[m](h, [], lengths) for m, h in hidden.items()}
        return hidden, rec

    def run_cma(self, hidden, lengths):
        """One CMA-Transformer per central: {c: F_c (B, L, d)}."""
        fine = {}
        for c in self.cfg.centrals:
            order = stream_order(c)
            with nvtx_range(f"cma/{c}"):
                fine[c] = self.cma[c](hidden[c], [hidden[m] for m in order[1:]], lengths)
        return fine

    def forward(self, text, audio, visual, speakers, lengths, *, eps: Optional[torch.Tensor] = None
                ) -> CMATHOutput:
        """text (B, L, D_t), audio (B, L, D_a), visual (B, L, D_v) float, right-padded;
        speakers (B, L) int in [0, S); lengths (B,) int. ``eps`` (B, L, d_z): the fusion noise
        to use instead of a fresh draw (for exact comparisons)."""
        self.check_inputs(text, audio, visual, speakers, lengths)
        B, L, _ = text.shape
        mask = padding_mask(lengths, L)
        hidden, rec = self.encode({"t": text, "a": audio, "v": visual}, speakers, mask, lengths)
        fine = self.run_cma(hidden, lengths)
        with nvtx_range("fusion"):
            coarse, kl = self.fusion([fine[c] for c in self.cfg.centrals], mask, eps)
        with nvtx_range("heads"):
            logits, fine_logits = self.compute_heads(coarse, fine, mask)
        return CMATHOutput(logits=logits, fine_logits=fine_logits, fine=fine, coarse=coarse,
                           mask=mask, lengths=lengths, rec_loss=rec, kl=kl,
                           kl_loss=masked_mean(kl, mask))

    def compute_heads(self, coarse, fine, mask):
        """Coarse logits (the prediction) and fine logits per central, zero at padded positions."""
        m = mask[..., None].to(coarse.dtype)
        logits = self.coarse_head(coarse) * m
        return logits, {c: self.fine_heads[c](f) * m for c, f in fine.items()}

    # ------------------------------------------------------------------ loss
    def beta_at(self, epoch: Optional[int]) -> float:
        """beta warmed up linearly from 0 over ``beta_warmup_epochs`` (full beta when epoch is None)."""
        cfg = self.cfg
        if epoch is None or cfg.beta_warmup_epochs == 0:
            return cfg.beta
        return cfg.beta * min(1.0, epoch / cfg.beta_warmup_epochs)

    def loss(self, out: CMATHOutput, labels: torch.Tensor, epoch: Optional[int] = None):
        """Total loss and a dict of every term (detached)."""
        with nvtx_range("loss"):
            return self._loss(out, labels, epoch)

    def classification_terms(self, out: CMATHOutput, labels: torch.Tensor) -> dict:
        """CE of the coarse head, summed CE of the fine heads, logit and feature distillation."""
        cfg, mask, weight = self.cfg, out.mask, self.class_weights
        y = labels[mask].long()

        def ce(logits):
            return F.cross_entropy(logits[mask].float(), y, weight=weight) if y.numel() \
                else logits.sum() * 0.0

        terms = {"ce": ce(out.logits)}
        terms["fine_ce"] = sum(ce(lg) for lg in out.fine_logits.values())
        tau = cfg.tau
        teacher = out.logits.detach() if cfg.detach_teacher else out.logits
        log_p_t = F.log_softmax(teacher.float() / tau, dim=-1)
        kd = 0.0
        for lg in out.fine_logits.values():
            log_p_s = F.log_softmax(lg.float() / tau, dim=-1)
            kl_rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
            kd = kd + masked_mean(kl_rows, mask)
        terms["kd_logit"] = kd * (tau * tau if cfg.tau_squared else 1.0)
        target = out.coarse.detach()
        feat = 0.0
        for f in out.fine.values():
            feat = feat + masked_mean(1.0 - F.cosine_similarity(f.float(), target.float(), dim=-1), mask)
        terms["kd_feat"] = feat
        return terms

    def _loss(self, out: CMATHOutput, labels: torch.Tensor, epoch: Optional[int]):
        cfg = self.cfg
        mask = out.mask
        check_tensor("labels", labels, ndim=2, integer=True)
        if labels.shape != mask.shape:
            raise ValueError(f"labels: expected shape {tuple(mask.shape)}, got {tuple(labels.shape)}")
        check_index_range("labels", labels, mask, cfg.num_classes)
        terms = self.classification_terms(out, labels)
        terms["rec"] = out.rec_loss.float()
        terms["kl"] = out.kl_loss.float()

        beta = self.beta_at(epoch)
        total = (terms["ce"] + cfg.gamma_fine * terms["fine_ce"] + cfg.gamma_kd * terms["kd_logit"]
                 + cfg.gamma_feat * terms["kd_feat"] + cfg.lambda_rec * terms["rec"]
                 + beta * terms["kl"])
        terms = {k: torch.as_tensor(v).detach() for k, v in terms.items()}
        terms["beta"] = torch.tensor(beta)
        terms["total"] = total.detach()
        return total, terms
