"""Fused variational fusion: a drop-in subclass of the reference layer (identical state_dict)."""

from __future__ import annotations

from ..ops import poe_fusion, variational_fusion
from ..reference.layers import VariationalFusion


class FusedVariationalFusion(VariationalFusion):
    """VariationalFusion whose Gaussian latent (GEMM + sampling + KL) and product of experts run as
    one Triton kernel each; the noise is drawn in the kernel unless ``eps`` is given."""

    def gaussian(self, e, weight, bias, eps, row_mask):
        return variational_fusion(e, weight, bias, eps=eps, row_mask=row_mask, training=self.training,
                                  logvar_clamp=self.logvar_clamp)

    def poe(self, mu, logvar, eps, row_mask):
        return poe_fusion(mu, logvar, eps=eps, row_mask=row_mask, training=self.training,
                          logvar_clamp=self.logvar_clamp)
