"""Fused ops: autograd Functions and functional APIs over the Triton kernels in
``cmath_fast.kernels`` (this package is their only importer). Each op has the interface of its
reference in ``cmath_fast.reference``."""

from .cross_modal_attention import CrossModalAttentionFunction, cross_modal_attention
from .variational_fusion import (PoEFusionFunction, VariationalFusionFunction, poe_fusion,
                                 variational_fusion)

__all__ = ["CrossModalAttentionFunction", "cross_modal_attention", "VariationalFusionFunction",
           "variational_fusion", "PoEFusionFunction", "poe_fusion"]
