"""The user-facing CMATH model: the reference model with a backend switch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .backend import resolve_backend
from .config import CMATHConfig
from .reference.model import CMATHOutput, CMATHReference


class CMATH(CMATHReference):
    """CMATH for multimodal emotion recognition in conversation.

    ``CMATH(CMATHConfig.iemocap(), backend="auto")(text, audio, visual, speakers, lengths)``.
    backend: "torch" (pure PyTorch), "triton" (fused kernels), "auto" (triton where it can run,
    else torch); the environment variable ``CMATH_FAST_BACKEND`` overrides it. The state_dict is
    the same whatever the backend, so checkpoints move between them.
    """

    def __init__(self, cfg: CMATHConfig, backend: str = "auto"):
        super().__init__(cfg)
        self.backend, self.backend_reason = resolve_backend(backend)
        if self.backend == "triton":
            from .nn import fuse_attention_layers, fuse_fusion_layer
            fuse_attention_layers(self)
            fuse_fusion_layer(self.fusion)

    def run_cma(self, hidden, lengths):
        if self.backend != "triton":
            return super().run_cma(hidden, lengths)
        from .nn import stacked_cma
        from .profiling import nvtx_range
        with nvtx_range("cma/" + "".join(self.cfg.centrals)):
            return stacked_cma(self.cma, hidden, lengths, self.cfg.centrals, self.training)

    # With the fused backend the per-central tails (fine heads, the three CE, logit and feature
    # distillation terms) run batched over the centrals: same math, a third of the launches.
    def compute_heads(self, coarse, fine, mask):
        if self.backend != "triton" or len(fine) == 1:
            return super().compute_heads(coarse, fine, mask)
        from .nn.attention import _linear
        C = len(fine)
        B, L, d = coarse.shape
        m = mask[..., None].to(coarse.dtype)
        h = torch.stack(list(fine.values())).view(C, B * L, d)
        heads = [self.fine_heads[c] for c in fine]
        h = F.dropout(F.relu(h), heads[0][1].p, self.training)
        stacked = _linear(h, [hd[2] for hd in heads]).view(C, B, L, -1) * m
        return self.coarse_head(coarse) * m, dict(zip(fine, stacked.unbind(0)))

    def classification_terms(self, out, labels):
        if self.backend != "triton" or len(out.fine_logits) == 1:
            return super().classification_terms(out, labels)
        cfg, mask = self.cfg, out.mask
        n = mask.sum().clamp_min(1).float()
        fine_logits = torch.stack(list(out.fine_logits.values()))  # (C, B, L, K)
        # Cross-entropies without boolean indexing (no host sync): per-position NLL weighted by
        # the class weight on valid positions; the C fine heads' weighted means summed.
        y = torch.where(mask, labels, torch.zeros_like(labels)).long()
        w = self.class_weights[y] if self.class_weights is not None else torch.ones_like(y, dtype=torch.float32)
        w = w * mask
        w_sum = w.sum().clamp_min(1e-12)

        def nll(logits):
            lp = F.log_softmax(logits.float(), dim=-1)
            return -lp.gather(-1, y.expand(lp.shape[:-1]).unsqueeze(-1)).squeeze(-1)

        terms = {"ce": (nll(out.logits) * w).sum() / w_sum,
                 "fine_ce": (nll(fine_logits) * w).sum() / w_sum}
        tau = cfg.tau
        teacher = out.logits.detach() if cfg.detach_teacher else out.logits
        log_p_t = F.log_softmax(teacher.float() / tau, dim=-1)
        log_p_s = F.log_softmax(fine_logits.float() / tau, dim=-1)
        kl_rows = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (C, B, L)
        m = mask.to(kl_rows.dtype)
        terms["kd_logit"] = (kl_rows * m).sum() / n * (tau * tau if cfg.tau_squared else 1.0)
        fine = torch.stack(list(out.fine.values())).float()
        cos = F.cosine_similarity(fine, out.coarse.detach().float()[None], dim=-1)
        terms["kd_feat"] = ((1.0 - cos) * m).sum() / n
        return terms

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


__all__ = ["CMATH", "CMATHConfig", "CMATHOutput"]
