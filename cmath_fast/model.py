"""The user-facing CMATH model: the reference model with a backend switch."""

from __future__ import annotations

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
        return stacked_cma(self.cma, hidden, lengths, self.cfg.centrals, self.training)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


__all__ = ["CMATH", "CMATHConfig", "CMATHOutput"]
