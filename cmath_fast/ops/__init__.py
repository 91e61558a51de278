"""Fused ops: autograd Functions and functional APIs over the Triton kernels in
``cmath_fast.kernels`` (this package is their only importer). Each op has the interface of its
reference in ``cmath_fast.reference`` (``row_conv``: nn.Conv1d's; ``cmath_loss_fused``:
``cmath_fast.losses.cmath_loss``); ``cross_modal_attention_packed`` is the form with keys and
values packed in one tensor that the model calls."""

from ..kernels.configs import LENGTH_BUCKETS
from .cross_modal_attention import (CrossModalAttentionFunction, PackedKVAttentionFunction,
                                    cross_modal_attention, cross_modal_attention_packed)
from .layer_norm import StackedLayerNormFunction, stacked_layer_norm_op
from .loss import CMATHLossFunction, cmath_loss_fused
from .reconstruction import reconstruction_loss, standardise_rows
from .row_conv import RowConvFunction, dialogue_rows, row_conv, row_conv_groups
from .variational_fusion import (PoEFusionFunction, VariationalFusionFunction, poe_fusion,
                                 variational_fusion)

__all__ = ["LENGTH_BUCKETS", "CrossModalAttentionFunction", "PackedKVAttentionFunction", "cross_modal_attention",
           "cross_modal_attention_packed", "VariationalFusionFunction", "variational_fusion",
           "PoEFusionFunction", "poe_fusion", "RowConvFunction", "row_conv", "row_conv_groups", "dialogue_rows",
           "standardise_rows", "reconstruction_loss", "StackedLayerNormFunction", "stacked_layer_norm_op",
           "CMATHLossFunction", "cmath_loss_fused"]
