"""Launch configurations of every kernel, in one table that the launchers and the ahead-of-time
compile tests both read.

A row is a rule: (kernel, length bucket, block_d, dtype) -> tile sizes, warps, stages; ``ANY``
matches every value and the first matching row wins. Under the interpreter every kernel takes the
small ``INTERPRETER`` tiles (its programs run one after another, so size is only time; multi-config
autotuning needs a driver). On a GPU the rows were chosen so that no kernel spills registers on
sm_90 (checked by the ahead-of-time compile test), not yet for speed.

Buckets: attention kernels key on the padded query length rounded up to a power of two in
[16, 128] (longer lengths share the 128 row: new lengths reuse a compiled kernel); the fusion
kernels key on d_z (and d_in for the GEMM's K tile).
"""

from __future__ import annotations

import functools
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import triton

from ._common import interpreting

ANY = None

LENGTH_BUCKETS = (16, 32, 64, 128)
BLOCK_DS = (16, 32, 64, 128)
DTYPES = ("fp32", "fp16", "bf16")
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class Tile(NamedTuple):
    """BLOCK_M (rows; BLOCK_N of the fusion kernels), BLOCK_N (keys; BLOCK_Z), BLOCK_K (the
    fusion GEMM's K tile, 0 where unused), num_warps, num_stages."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# kernel, bucket, block_d, dtype -> Tile.
ATTENTION = (
    ("cma_fwd", 16, ANY, ANY, Tile(16, 32, 0, 2, 2)),
    ("cma_fwd", 32, ANY, ANY, Tile(32, 32, 0, 4, 2)),
    ("cma_fwd", ANY, 128, ANY, Tile(64, 64, 0, 8, 2)),
    ("cma_fwd", 64, ANY, ANY, Tile(64, 64, 0, 4, 2)),
    ("cma_fwd", 128, ANY, ANY, Tile(128, 64, 0, 8, 2)),
    # both backward kernels spill at 64 x 64 with dh 128; at 32 x 64, dK/dV spills with 8 warps
    # (packed rows) and dQ with 4
    ("cma_bwd_dkdv", ANY, 128, ANY, Tile(32, 64, 0, 4, 2)),
    ("cma_bwd_dq", ANY, 128, ANY, Tile(32, 64, 0, 8, 2)),
    ("cma_bwd_dkdv", 16, ANY, ANY, Tile(16, 32, 0, 4, 2)),
    ("cma_bwd_dq", 16, ANY, ANY, Tile(16, 32, 0, 4, 2)),
    ("cma_bwd_dkdv", 32, ANY, ANY, Tile(32, 32, 0, 4, 2)),
    ("cma_bwd_dq", 32, ANY, ANY, Tile(32, 32, 0, 4, 2)),
    ("cma_bwd_dkdv", ANY, ANY, ANY, Tile(64, 64, 0, 4, 2)),
    ("cma_bwd_dq", ANY, ANY, ANY, Tile(64, 64, 0, 4, 2)),
    # the backward preprocess is elementwise with a row sum: 32-row tiles with 8 warps stay
    # spill-free at dh 128 as the runtime specialises them (4 warps spilled 16 bytes on sm_90)
    ("cma_bwd_preprocess", 16, ANY, ANY, Tile(16, 0, 0, 4, 1)),
    ("cma_bwd_preprocess", ANY, ANY, ANY, Tile(32, 0, 0, 8, 1)),
    ("cma_dropout_mask", ANY, ANY, ANY, Tile(32, 32, 0, 4, 1)),
)

# Rows for one GPU family ("sm80", "sm86", "sm90", "sm100"; ``family_of``), in ATTENTION's format,
# consulted before ATTENTION on a device of that family: where a generic row spills registers
# there (the ahead-of-time test compiles every launcher tile for every family), and the winners a
# CMATH_FAST_AUTOTUNE=1 run prints (kernels/autotune.py) once measured. Ampere and Ada's mma.sync
# keeps more in registers than Hopper's wgmma: 64 x 64 tiles at head dim 128 (forward) and 64
# (backward) spill there, 32 x 64 with 8 warps do not (ptxas, sm_80/86/89/100/120).
_NARROW = (
    ("cma_fwd", 64, 128, ANY, Tile(32, 64, 0, 8, 2)),
    ("cma_fwd", 128, 128, ANY, Tile(32, 64, 0, 8, 2)),
)
_AMPERE = _NARROW + tuple((kernel, bucket, 64, ANY, Tile(32, 64, 0, 8, 2))
                          for kernel in ("cma_bwd_dkdv", "cma_bwd_dq") for bucket in (64, 128))
ATTENTION_BY_FAMILY: Dict[str, tuple] = {
    # sm_80 only: dQ's 32 x 32 tile at head dim 32 spills 8 bytes with 4 warps
    "sm80": _AMPERE + (("cma_bwd_dq", 32, 32, ANY, Tile(32, 32, 0, 8, 2)),),
    "sm86": _AMPERE,
    "sm100": _NARROW,
}


# The GPU families the tables and the ahead-of-time tests know, with their per-block opt-in shared
# memory (bytes). Every other NVIDIA architecture maps to the nearest of them (``family_of``).
FAMILY_SHARED_MEMORY = {"sm80": 166_912, "sm86": 101_376, "sm90": 232_448, "sm100": 232_448}


def family_of(major: int, minor: int) -> str:
    """The family whose rules an NVIDIA compute capability takes: sm_87 (Jetson Orin) -> "sm80"
    (A100's shared memory); sm_89 (RTX 40xx, L4, L40S) and sm_120 (RTX 50xx) -> "sm86" (the RTX
    cards' 101,376 bytes, mma.sync); sm_90 -> "sm90"; sm_100/103 -> "sm100". Below 8.0 (Triton's
    NVIDIA floor) no family has rules: "sm75" and the like, which take the generic rows."""
    cc = 10 * major + minor
    if cc >= 120:
        return "sm86"
    if cc >= 100:
        return "sm100"
    if cc >= 90:
        return "sm90"
    if cc >= 86 and cc != 87:
        return "sm86"
    if cc >= 80:
        return "sm80"
    return f"sm{major}{minor}"


@functools.lru_cache(maxsize=None)
def _family(index: int) -> str:
    if getattr(torch.version, "hip", None):  # a gfx version is no NVIDIA compute capability
        return ""
    return family_of(*torch.cuda.get_device_capability(index))


def gpu_family(index: Optional[int] = None) -> str:
    """The family of a CUDA device (``family_of``): the current device by default, the one Triton
    launches on. Empty without CUDA and on ROCm."""
    if not torch.cuda.is_available():
        return ""
    return _family(torch.cuda.current_device() if index is None else index)


# kernel, d_z bucket (BLOCK_Z), d_in bucket (BLOCK_K), dtype -> Tile (block_m = BLOCK_N rows,
# block_n = BLOCK_Z). 8 warps for the GEMM: with 4, the two accumulators plus the Philox epilogue
# spill on sm_90. 16 x 64 per 4 warps for the elementwise kernels: larger tiles spill (Philox keeps
# four words per element).
FUSION = (
    ("vf_fwd", ANY, ANY, ANY, Tile(64, 0, 0, 8, 3)),
    ("vf_elementwise", ANY, ANY, ANY, Tile(16, 0, 0, 4, 1)),
)

# kernel, -, -, dtype -> Tile. The U-Net's row convolution (kernels/row_conv.py): "fwd" tiles are
# (rows, C_out, C_in step); "bwd_dx" (rows, C_in, C_out step); "bwd_dw" (row step, C_out, C_in).
ROW_CONV = (
    ("fwd", ANY, ANY, ANY, Tile(64, 64, 32, 4, 3)),
    ("bwd_dx", ANY, ANY, ANY, Tile(64, 64, 32, 4, 3)),
    ("bwd_dw", ANY, ANY, ANY, Tile(32, 64, 64, 8, 2)),
    ("taps", ANY, ANY, ANY, Tile(32, 64, 0, 4, 1)),  # the weights to tap-major rows: (C_in, C_out) tiles
)

# Rows for one GPU family in FUSION's and ROW_CONV's formats, consulted before those tables there
# (see ATTENTION_BY_FAMILY): the fusion GEMM's 64-row tile at d_z and d_in buckets 64 spills with
# mma.sync; 32 rows do not.
FUSION_BY_FAMILY: Dict[str, tuple] = {family: (("vf_fwd", 64, 64, ANY, Tile(32, 0, 0, 8, 3)),)
                                      for family in ("sm80", "sm86")}
# The row convolution's dX tile reads the tap-major weight transposed: with 4 warps it spills with
# mma.sync (sm_80, sm_86), with 8 it does not. Its dW tile holds three taps' accumulators: at
# 64 input channels it needs all 255 registers with mma.sync, at 32 it takes 175.
ROW_CONV_BY_FAMILY: Dict[str, tuple] = {family: (("bwd_dx", ANY, ANY, ANY, Tile(64, 64, 32, 8, 3)),
                                                 ("bwd_dw", ANY, ANY, ANY, Tile(32, 64, 32, 8, 2)))
                                        for family in ("sm80", "sm86")}

INTERPRETER = Tile(16, 16, 16, 1, 1)
FUSION_Z_BUCKETS = (16, 32, 64)
FUSION_K_BUCKETS = (16, 32, 64)


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES[dtype]


def length_bucket(n: int) -> int:
    """Power-of-two bucket of a padded length, clipped to [16, 128]."""
    return max(16, min(128, triton.next_power_of_2(max(int(n), 1))))


def _lookup(table, kernel: str, key1, key2, dtype: str) -> Tile:
    for k, a, b, d, tile in table:
        if k == kernel and a in (ANY, key1) and b in (ANY, key2) and d in (ANY, dtype):
            return tile
    raise KeyError(f"no launch config for {kernel} at {key1}, {key2}, {dtype}")


def attention_tile_for(kernel: str, bucket: int, block_d: int, dtype: str, family: str) -> Tile:
    """The tile ``attention_tile`` chooses on a GPU of ``family`` for a length bucket."""
    return _lookup(ATTENTION_BY_FAMILY.get(family, ()) + ATTENTION, kernel, bucket, block_d, dtype)


def attention_tile(kernel: str, length: int, block_d: int, dtype: torch.dtype, gpu: bool = None) -> Tile:
    """The tile of an attention kernel ("cma_fwd", "cma_bwd_dkdv", "cma_bwd_dq", "cma_bwd_preprocess",
    "cma_dropout_mask") for a padded query length, a padded head dim and the input dtype."""
    if not (gpu if gpu is not None else not interpreting()):
        return INTERPRETER
    return attention_tile_for(kernel, length_bucket(length), block_d, dtype_name(dtype), gpu_family())


def fusion_z_bucket(d_z: int) -> int:
    return 64 if d_z > 32 else max(16, triton.next_power_of_2(d_z))


def fusion_k_bucket(d_in: int) -> int:
    return 64 if d_in >= 64 else max(16, triton.next_power_of_2(d_in))


def fusion_tile(kernel: str, d_z: int, d_in: int, dtype: torch.dtype, gpu: bool = None) -> Tile:
    """The tile of a fusion kernel ("vf_fwd", "vf_elementwise") with BLOCK_Z and BLOCK_K filled
    in from the d_z and d_in buckets."""
    if not (gpu if gpu is not None else not interpreting()):
        return INTERPRETER._replace(block_n=max(16, min(32, triton.next_power_of_2(d_z))))
    bz, bk = fusion_z_bucket(d_z), fusion_k_bucket(d_in)
    tile = _lookup(FUSION_BY_FAMILY.get(gpu_family(), ()) + FUSION, kernel, bz, bk, dtype_name(dtype))
    return tile._replace(block_n=bz, block_k=bk if kernel == "vf_fwd" else 0)


def all_attention_tiles(family: str = "") -> Iterator[Tuple[str, int, int, str, Tile]]:
    """Every (kernel, bucket, block_d, dtype, tile) a launcher can choose on a GPU of ``family``
    (its rows first; "" for the generic rows alone)."""
    table = ATTENTION_BY_FAMILY.get(family, ()) + ATTENTION
    for kernel in ("cma_fwd", "cma_bwd_dkdv", "cma_bwd_dq", "cma_bwd_preprocess"):
        for bucket in LENGTH_BUCKETS:
            for bd in BLOCK_DS:
                for dt in DTYPES:
                    yield kernel, bucket, bd, dt, _lookup(table, kernel, bucket, bd, dt)


def all_fusion_tiles(family: str = "") -> Iterator[Tuple[str, int, int, str, Tile]]:
    """Every (kernel, BLOCK_Z, BLOCK_K, dtype, tile) a launcher can choose on a GPU of ``family``."""
    table = FUSION_BY_FAMILY.get(family, ()) + FUSION
    for kernel in ("vf_fwd", "vf_elementwise"):
        for bz in FUSION_Z_BUCKETS:
            for bk in (FUSION_K_BUCKETS if kernel == "vf_fwd" else (16,)):
                for dt in DTYPES:
                    tile = _lookup(table, kernel, bz, bk, dt)
                    yield kernel, bz, bk, dt, tile._replace(block_n=bz,
                                                            block_k=bk if kernel == "vf_fwd" else 0)


def row_conv_tile(kernel: str, dtype: torch.dtype, gpu: bool = None) -> Tile:
    """The tile of a row-convolution kernel ("fwd", "bwd_dx", "bwd_dw", "taps")."""
    if not (gpu if gpu is not None else not interpreting()):
        return INTERPRETER
    return _lookup(ROW_CONV_BY_FAMILY.get(gpu_family(), ()) + ROW_CONV, kernel, ANY, ANY, dtype_name(dtype))


def all_row_conv_tiles(family: str = "") -> Iterator[Tuple[str, str, Tile]]:
    """Every (kernel, dtype, tile) a row-convolution launcher can choose on a GPU of ``family``."""
    table = ROW_CONV_BY_FAMILY.get(family, ()) + ROW_CONV
    for kernel in ("fwd", "bwd_dx", "bwd_dw"):
        for dt in DTYPES:
            yield kernel, dt, _lookup(table, kernel, ANY, ANY, dt)
