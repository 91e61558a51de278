"""The benchmark shapes (DESIGN §4): the one module the benchmarks and the report import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

R1_LENGTHS = (110, 94, 78, 66, 60, 54, 50, 46, 42, 38, 34, 30, 26, 22, 18, 12)
R2_LENGTHS = (33, 30, 27, 24, 22, 20, 19, 18, 17, 16, 15, 14, 14, 13, 13, 12, 12, 11, 11, 11, 10, 10,
              10, 10, 9, 9, 9, 9, 9, 8, 8, 8, 8, 8, 8, 7, 7, 7, 7, 7, 7, 6, 6, 6, 6, 6, 5, 5, 5, 5, 5,
              4, 4, 4, 4, 3, 3, 3, 3, 2, 2, 2, 1, 1)
S2_LENGTHS = (8192, 4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4)
HEADS = {256: 4, 512: 8, 1024: 8}


@dataclass(frozen=True)
class AttentionShape:
    """One CMA layer's attention: ``centrals`` x ``streams`` attentions over dialogues of
    ``lengths`` (every stream of a dialogue has its length), model dim d in ``heads`` heads."""

    name: str
    lengths: Tuple[int, ...]
    d: int
    heads: int
    centrals: int = 3
    streams: int = 3
    quick: bool = False

    @property
    def head_dim(self) -> int:
        return self.d // self.heads

    @property
    def batch(self) -> int:
        return len(self.lengths)

    @property
    def max_len(self) -> int:
        return max(self.lengths)


@dataclass(frozen=True)
class ModelShape:
    """A whole-model step: a dataset preset's feature dims at model width d over ``lengths``."""

    name: str
    preset: str
    lengths: Tuple[int, ...]
    d: int
    heads: int
    quick: bool = False


def _attention_shapes() -> Dict[str, AttentionShape]:
    out = {}
    for tag, lengths in (("R1", R1_LENGTHS), ("R2", R2_LENGTHS)):
        for d in (256, 512, 1024):
            out[f"{tag}-d{d}"] = AttentionShape(f"{tag}-d{d}", lengths, d, HEADS[d], quick=d == 1024)
    # S1: long context, one stream of 2048 per dialogue and central: B 8, dh 128 and 64.
    out["S1-d512"] = AttentionShape("S1-d512", (2048,) * 8, 512, 8)
    out["S1-d1024"] = AttentionShape("S1-d1024", (2048,) * 8, 1024, 8)
    out["S2-d1024"] = AttentionShape("S2-d1024", S2_LENGTHS, 1024, 8)
    return out


ATTENTION_SHAPES = _attention_shapes()
MODEL_SHAPES = {
    "iemocap-d256": ModelShape("iemocap-d256", "iemocap", R1_LENGTHS, 256, 4, quick=True),
    "iemocap-d1024": ModelShape("iemocap-d1024", "iemocap", R1_LENGTHS, 1024, 8, quick=True),
    "meld-d256": ModelShape("meld-d256", "meld", R2_LENGTHS, 256, 4),
    "meld-d1024": ModelShape("meld-d1024", "meld", R2_LENGTHS, 1024, 8),
}
# Fusion ops at the model's sizes: N = sum of lengths, d_in = 3 d (gaussian), M = 3 experts (poe).
FUSION_SHAPES = {
    "iemocap-d1024": (sum(R1_LENGTHS), 1024),
    "meld-d1024": (sum(R2_LENGTHS), 1024),
    "iemocap-d256": (sum(R1_LENGTHS), 256),
}


def attention_flops(shape: AttentionShape, mode: str) -> float:
    """FLOPs of one layer's attention: forward 4 d sum_b L_b^2 per (central, stream) attention
    (QK^T and PV, 2 FLOPs per multiply-add); backward 2.5x forward."""
    fwd = 4.0 * shape.d * sum(L * L for L in shape.lengths) * shape.centrals * shape.streams
    return {"fwd": fwd, "bwd": 2.5 * fwd, "fwd+bwd": 3.5 * fwd}[mode]


def attention_bytes(shape: AttentionShape, mode: str, element_size: int) -> float:
    """Bytes a perfect kernel moves: q, k, v and the output once (and their gradients in bwd)."""
    tokens = shape.batch * shape.max_len * shape.centrals
    fwd = element_size * tokens * shape.d * (1 + 2 * shape.streams + shape.streams)
    return {"fwd": fwd, "bwd": 2 * fwd, "fwd+bwd": 3 * fwd}[mode]
