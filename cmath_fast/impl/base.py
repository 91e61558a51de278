"""The interface between the CMATH model and the code that computes it."""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import torch


class UnsupportedConfigError(ValueError):
    """An implementation cannot run a config; the message lists every reason."""


class Implementation:
    """The four stages of a CMATH forward. Stateless: the model owns the modules and passes itself;
    an implementation reads every hyper-parameter from the model's config and modules.

    Shapes: B dialogues, L padded length, d model width; ``mask`` (B, L) bool of valid positions,
    ``lengths`` (B,) int.
    """

    name = "abstract"
    # The components that run fused (``cmath_fast.components``): none here.
    fused = frozenset()
    # Whether encode/cma take packed rows (``cmath_fast.packing``): mask (1, N) and (1, N, ...)
    # tensors, dialogue boundaries from ``rows``. Implementations that do not pack get the padded
    # layout and rows=None.
    packs_rows = False

    def not_supported_reasons(self, cfg) -> List[str]:
        """Why this implementation cannot run ``cfg`` (empty when it can)."""
        return []

    def encode(self, model, feats: Dict[str, torch.Tensor], speakers: torch.Tensor, mask: torch.Tensor,
               lengths: torch.Tensor, rows=None) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Reconstruction U-Nets and embeddings: ({m: H_m (B, L, d)}, L_rec scalar)."""
        raise NotImplementedError

    def cma(self, model, hidden: Dict[str, torch.Tensor], lengths: torch.Tensor, rows=None) -> Dict[str, torch.Tensor]:
        """One CMA-Transformer per central: {c: F_c (B, L, d)}."""
        raise NotImplementedError

    def fuse(self, model, fine: Sequence[torch.Tensor], mask: torch.Tensor, eps) -> Tuple[torch.Tensor, torch.Tensor]:
        """Variational fusion of the F_c in the config's central order: (H_f (B, L, d), kl (B, L))."""
        raise NotImplementedError

    def heads(self, model, coarse: torch.Tensor, fine: Dict[str, torch.Tensor], mask: torch.Tensor, rows=None
              ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Coarse logits (the prediction) and fine logits per central, zero at padded positions
        (on packed rows, whatever the layout's padding rows hold: nothing reads them unmasked)."""
        raise NotImplementedError

    def loss(self, cfg, out, labels: torch.Tensor, class_weights, epoch=None, beta=None):
        """(total, terms) of ``losses.cmath_loss`` for a forward output (padded or packed rows)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
