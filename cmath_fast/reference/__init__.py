"""Pure-PyTorch reference: functional ops, layers and the model. The spec of every fused path."""

from .functional import (cross_modal_attention_ref, gaussian_kl, key_padding_mask, poe_combine,
                         poe_fusion_ref, variational_fusion_ref)
from .layers import (CMALayer, CMATransformer, CrossModalAttention, FeedForward,
                     ModalityProjection, ModalityReconstruction, VariationalFusion)
from .model import CMATHOutput, CMATHReference

__all__ = [
    "cross_modal_attention_ref", "variational_fusion_ref", "poe_fusion_ref", "poe_combine",
    "gaussian_kl", "key_padding_mask", "CMALayer", "CMATransformer", "CrossModalAttention",
    "FeedForward", "ModalityProjection", "ModalityReconstruction", "VariationalFusion",
    "CMATHOutput", "CMATHReference",
]
