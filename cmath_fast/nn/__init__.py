"""Fused layers: subclasses of the reference layers (identical state_dict) that run the Triton ops."""

from .attention import FusedCrossModalAttention, fuse_attention_layers, stacked_cma

__all__ = ["FusedCrossModalAttention", "fuse_attention_layers", "stacked_cma"]


def fuse_fusion_layer(fusion) -> bool:
    """The fused variational fusion (a later kernel); returns whether the layer was converted."""
    try:
        from .fusion import FusedVariationalFusion
    except ImportError:
        return False
    fusion.__class__ = FusedVariationalFusion
    return True
