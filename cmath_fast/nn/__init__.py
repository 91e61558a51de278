"""Fused layers: subclasses of the reference layers (identical state_dict) that run the Triton ops."""

from .attention import FusedCrossModalAttention, fuse_attention_layers, stacked_cma
from .fusion import FusedVariationalFusion

__all__ = ["FusedCrossModalAttention", "FusedVariationalFusion", "fuse_attention_layers",
           "fuse_fusion_layer", "stacked_cma"]


def fuse_fusion_layer(fusion) -> bool:
    """Turn the model's VariationalFusion into FusedVariationalFusion in place (gaussian and poe;
    concat has no latent). Returns whether the layer was converted."""
    from ..reference.layers import VariationalFusion
    if type(fusion) is not VariationalFusion or fusion.kind == "concat":
        return False
    fusion.__class__ = FusedVariationalFusion
    return True
