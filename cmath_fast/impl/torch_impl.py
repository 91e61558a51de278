"""The reference implementation: every stage is the reference layers' own forward (the spec)."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from ..config import MODALITIES
from ..losses import cmath_loss
from ..profiling import nvtx_range
from ..reference.layers import sinusoidal_positions, stream_order
from .base import Implementation


class TorchImplementation(Implementation):
    name = "torch"

    def encode(self, model, feats, speakers, mask, lengths, rows=None):
        cfg = model.cfg
        with nvtx_range("reconstruction"):
            codes, rec = self.reconstruction(model, feats, mask, lengths, rows)
        with nvtx_range("embed"):
            hidden = self.embed(model, codes, speakers, mask, feats["t"].dtype, rows)
            if cfg.aux_self_attention:
                hidden = self.self_attention(model.aux_encoders, hidden, lengths, rows)
        return hidden, rec

    def embed(self, model, codes: Dict[str, torch.Tensor], speakers, mask, dtype, rows=None) -> Dict[str, torch.Tensor]:
        """Each modality's code plus the positions and the speaker embedding, then dropout."""
        B, L = mask.shape
        pos = sinusoidal_positions(L, model.cfg.d_model, device=mask.device, dtype=dtype)
        spk = torch.where(mask, speakers.long(), torch.full_like(speakers.long(), model.cfg.num_speakers))
        spk = model.speaker_embedding(spk)
        return {m: model.embed_dropout(z + pos + spk) for m, z in codes.items()}

    def reconstruction(self, model, feats, mask, lengths, rows=None):
        """Each modality's U-Net (or projection), the reference modules' own forwards:
        ({m: Z_m}, L_rec)."""
        n_valid = mask.sum().clamp_min(1).to(torch.float32)
        codes, rec = {}, feats["t"].new_zeros(())
        for m in MODALITIES:
            z, x_hat, x_std = model.encoders[m](feats[m], mask)
            if x_hat is not None:
                rec = rec + F.mse_loss(x_hat, x_std, reduction="sum") / (n_valid * x_std.shape[-1])
            codes[m] = z
        return codes, rec

    def self_attention(self, layers, hidden: Dict[str, torch.Tensor], lengths, rows=None) -> Dict[str, torch.Tensor]:
        """The auxiliary streams' own 1-layer self-attention (``aux_self_attention``)."""
        return {m: layers[m](h, [], lengths) for m, h in hidden.items()}

    def cma(self, model, hidden, lengths, rows=None):
        fine = {}
        for c in model.cfg.centrals:
            order = stream_order(c)
            fine[c] = model.cma[c](hidden[c], [hidden[m] for m in order[1:]], lengths)
        return fine

    def fuse(self, model, fine, mask, eps):
        return model.fusion(fine, mask, eps)

    def loss(self, cfg, out, labels, class_weights, epoch=None, beta=None):
        return cmath_loss(cfg, out, labels, class_weights, epoch, beta=beta)

    def heads(self, model, coarse, fine, mask, rows=None):
        m = mask[..., None].to(coarse.dtype)
        logits = model.coarse_head(coarse) * m
        return logits, {c: model.fine_heads[c](f) * m for c, f in fine.items()}
