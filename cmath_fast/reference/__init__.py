"""Pure-PyTorch reference: functional ops and layers. The spec of every fused path; the model
(``cmath_fast.model``) computes with these layers through its "torch" implementation."""

from .functional import (cross_modal_attention_ref, gaussian_kl, key_padding_mask, poe_combine,
                         poe_fusion_ref, variational_fusion_ref)
from .layers import (ACTIVATIONS, CMALayer, CMATransformer, CrossModalAttention, FeedForward, FineHead,
                     ModalityProjection, ModalityReconstruction, VariationalFusion)

__all__ = [
    "cross_modal_attention_ref", "variational_fusion_ref", "poe_fusion_ref", "poe_combine",
    "gaussian_kl", "key_padding_mask", "ACTIVATIONS", "CMALayer", "CMATransformer",
    "CrossModalAttention", "FeedForward", "FineHead", "ModalityProjection", "ModalityReconstruction",
    "VariationalFusion",
]
