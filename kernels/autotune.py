"""Autotune mode: ``CMATH_FAST_AUTOTUNE=1`` on a GPU runs ``triton.autotune`` over a declared
candidate list for each tunable kernel instead of taking its tile from the config table, and
reports every winner as a row of that table, so that a tuning run refreshes it.

Each launcher calls ``launch_tile(name, kernel, grid, tile, row_key, *args, **kwargs)``. Without
the mode (and always under the interpreter, whose multi-config autotuning needs a driver) that is
a plain launch with the table's ``tile``. With it, the kernel is wrapped once in a
``triton.autotune`` over ``CANDIDATES[name]`` plus the table's own tile, keyed on the kernel's
length and head-dim arguments (and the tensors' dtypes); each new key is benchmarked on its first
call, and the winner is printed to stderr as

    ("cma_fwd", 128, 64, "bf16", Tile(128, 64, 0, 8, 3)),  # sm90 ...: 41.2 us; table Tile(...) 55.0 us

(``row_key`` is the table's (length bucket, block_d, dtype)), appended to the file named by
``CMATH_FAST_AUTOTUNE_OUT`` if set, and kept in ``winners()``. Pasted into
``configs.ATTENTION_BY_FAMILY[<family>]``, the rows take effect on that GPU family. Every kernel
tuned here writes its outputs without accumulating into them, so re-running it while benchmarking
is harmless.

The fusion's GEMM kernel (``vf_fwd``) is tuned the same way, its rows per program, warps and
stages (winners for ``configs.FUSION_BY_FAMILY``), and so are the U-Net's three row-convolution
kernels, every block size (``configs.ROW_CONV_BY_FAMILY``).

The candidates follow what reaches high throughput on Hopper (Triton's fused-attention tutorial,
FlashAttention-2): 64-128-row query tiles with 4-8 warps, 32-128-column key tiles, 2-4 pipeline
stages; small tiles stay in the list for short dialogues.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Dict, List, Set, Tuple

import triton

from ._common import interpreting, launch
from .configs import Tile, gpu_family

ENV = "CMATH_FAST_AUTOTUNE"
OUT_ENV = "CMATH_FAST_AUTOTUNE_OUT"

# The constexprs each tunable kernel takes from its tile.
PARAMS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "cma_fwd": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n")),
    "cma_bwd_dkdv": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n")),
    "cma_bwd_dq": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n")),
    "cma_bwd_preprocess": (("BLOCK_M", "block_m"),),
    # the fusion GEMM's rows per program; its BLOCK_Z (the KL partials' layout) and BLOCK_K are the
    # table's buckets
    "vf_fwd": (("BLOCK_N", "block_m"),),
    # the U-Net's row convolutions: every block size
    "row_conv_fwd": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n"), ("BLOCK_K", "block_k")),
    "row_conv_bwd_dx": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n"), ("BLOCK_K", "block_k")),
    "row_conv_bwd_dw": (("BLOCK_M", "block_m"), ("BLOCK_N", "block_n"), ("BLOCK_K", "block_k")),
}
# Where each kernel's winners go (kernels/configs.py): the per-family table and the row's name.
TABLES = {"vf_fwd": ("FUSION_BY_FAMILY", "vf_fwd"),
          "row_conv_fwd": ("ROW_CONV_BY_FAMILY", "fwd"),
          "row_conv_bwd_dx": ("ROW_CONV_BY_FAMILY", "bwd_dx"),
          "row_conv_bwd_dw": ("ROW_CONV_BY_FAMILY", "bwd_dw")}
# The kernel arguments a tuned choice is keyed on (besides the tensors' dtypes).
KEYS: Dict[str, List[str]] = {
    "cma_fwd": ["Lq", "dh"],
    "cma_bwd_dkdv": ["Lq", "dh"],
    "cma_bwd_dq": ["Lq", "dh"],
    "cma_bwd_preprocess": ["Lq", "dh"],
    "vf_fwd": ["d_in", "d_z"],
    "row_conv_fwd": ["CI0", "CI1", "CI2", "CO0", "CO1", "CO2", "C_B", "K"],
    "row_conv_bwd_dx": ["CI0", "CI1", "CI2", "CO0", "CO1", "CO2", "C_B", "K"],
    "row_conv_bwd_dw": ["CI0", "CI1", "CI2", "CO0", "CO1", "CO2", "C_B", "K"],
}


def _grid(tiles, stages) -> List[Tile]:
    return [Tile(m, n, 0, w, s) for (m, n, w) in tiles for s in stages]


CANDIDATES: Dict[str, List[Tile]] = {
    "cma_fwd": _grid([(16, 32, 2), (32, 32, 4), (64, 32, 4), (64, 64, 4), (64, 128, 4), (128, 32, 4),
                      (128, 64, 8), (128, 128, 8)], (2, 3, 4)),
    "cma_bwd_dkdv": _grid([(16, 32, 4), (32, 32, 4), (32, 64, 4), (64, 32, 4), (64, 64, 4), (64, 64, 8),
                           (64, 128, 8), (128, 64, 8)], (2, 3)),
    "cma_bwd_dq": _grid([(16, 32, 4), (32, 32, 4), (32, 64, 4), (32, 64, 8), (64, 32, 4), (64, 64, 4),
                         (64, 64, 8), (128, 64, 8)], (2, 3)),
    "cma_bwd_preprocess": [Tile(m, 0, 0, w, 1) for m in (16, 32, 64, 128) for w in (4, 8)],
    "vf_fwd": [Tile(m, 0, 0, w, s) for m in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)],
    "row_conv_fwd": [Tile(m, n, k, w, s) for (m, n, k, w) in ((32, 64, 32, 4), (64, 64, 32, 4), (64, 128, 32, 4),
                                                               (128, 64, 32, 8), (128, 128, 32, 8), (64, 64, 64, 4),
                                                               (128, 128, 64, 8)) for s in (2, 3, 4)],
    "row_conv_bwd_dx": [Tile(m, n, k, w, s) for (m, n, k, w) in ((32, 64, 32, 4), (64, 64, 32, 4), (64, 128, 32, 4),
                                                                  (128, 64, 32, 8), (128, 128, 32, 8),
                                                                  (64, 64, 64, 4), (128, 128, 64, 8)) for s in (2, 3, 4)],
    "row_conv_bwd_dw": [Tile(m, n, k, w, s) for (m, n, k, w) in ((32, 64, 32, 4), (32, 64, 64, 4), (64, 64, 64, 4),
                                                                  (32, 128, 64, 8), (64, 128, 128, 8)) for s in (2, 3)],
}

_TUNERS: Dict[str, object] = {}
_SEEN: Set[Tuple] = set()  # (kernel, key) pairs already reported
_WINNERS: List[dict] = []


def enabled() -> bool:
    """Autotune mode: the environment variable set, on a GPU (never under the interpreter)."""
    return os.environ.get(ENV) == "1" and not interpreting()


def _meta(name: str, tile: Tile) -> dict:
    return {param: getattr(tile, field) for param, field in PARAMS[name]}


def candidates(name: str, table_tile: Tile) -> List[Tile]:
    """The declared candidates of a kernel with the table's own tile first, without repeats (only
    the fields the kernel takes from a tile, warps and stages count)."""
    out, seen = [], set()
    for t in [table_tile] + CANDIDATES[name]:
        sig = tuple(_meta(name, t).values()) + (t.num_warps, t.num_stages)
        if sig not in seen:
            seen.add(sig)
            out.append(t)
    return out


def _tuner(name: str, kernel, table_tile: Tile, autotune=None):
    tuner = _TUNERS.get(name)
    if tuner is None:
        autotune = autotune or triton.autotune
        configs = [triton.Config(_meta(name, t), num_warps=t.num_warps, num_stages=t.num_stages)
                   for t in candidates(name, table_tile)]
        tuner = autotune(configs=configs, key=KEYS[name])(kernel)
        _TUNERS[name] = tuner
    return tuner


def _tile_of(name: str, config, table_tile: Tile) -> Tile:
    kw = getattr(config, "kwargs", {}) or {}
    fields = {field: kw[param] for param, field in PARAMS[name] if param in kw}
    return table_tile._replace(num_warps=config.num_warps, num_stages=config.num_stages, **fields)


def format_row(name: str, row_key: Tuple, tile: Tile, note: str = "") -> str:
    """A winner as a row of its config table (``kernels/configs.py``); ``name`` as the table
    names the kernel, ``row_key`` its two bucket keys (None: any) and dtype."""
    a, b, dtype = row_key
    row = f'("{name}", {a!r}, {b!r}, "{dtype}", Tile({", ".join(str(int(x)) for x in tile)})),'
    return row + (f"  # {note}" if note else "")


def _report(name: str, row_key: Tuple, key_values: Tuple, tuner, table_tile: Tile) -> None:
    best = getattr(tuner, "best_config", None)
    if best is None:
        return
    tile = _tile_of(name, best, table_tile)
    timings = getattr(tuner, "configs_timings", None) or {}

    def ms(cfg):
        t = timings.get(cfg)
        t = t[0] if isinstance(t, (list, tuple)) else t
        return f"{1000 * t:.1f} us" if t is not None else "?"
    table_cfg = next((c for c in timings if _tile_of(name, c, table_tile) == table_tile), None)
    table, row_name = TABLES.get(name, ("ATTENTION_BY_FAMILY", name))
    note = f"{table}[{gpu_family()!r}], key {key_values}: {ms(best)}"
    if table_cfg is not None:
        note += f"; table {tuple(table_tile)} {ms(table_cfg)}"
    line = format_row(row_name, row_key, tile, note)
    _WINNERS.append({"kernel": name, "row_key": row_key, "key": key_values, "tile": tile, "row": line})
    print(f"[cmath-fast autotune] {line}", file=sys.stderr)
    path = os.environ.get(OUT_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(line + "\n")


def launch_tile(name: str, kernel, grid: Callable[[dict], tuple], tile: Tile, row_key: Tuple, *args,
                key_values: Tuple = (), **kwargs):
    """Launch ``kernel`` with the table's ``tile`` (its block sizes, warps and stages), or in
    autotune mode with the best of the candidates for this key. ``grid(meta)`` -> the launch grid
    for a tile's block sizes; ``row_key`` the table's (length bucket, block_d, dtype);
    ``key_values`` what the tuner keys on (reported with the winner)."""
    if not enabled():
        meta = _meta(name, tile)
        return launch(kernel, grid(meta), *args, **meta, num_warps=tile.num_warps,
                      num_stages=tile.num_stages, **kwargs)
    tuner = _tuner(name, kernel, tile)
    seen = (name, tuple(key_values))
    out = launch(tuner, grid, *args, **kwargs)
    if seen not in _SEEN:
        _SEEN.add(seen)
        _report(name, row_key, tuple(key_values), tuner, tile)
    return out


def winners() -> List[dict]:
    """The winners reported so far in this process."""
    return list(_WINNERS)


def reset() -> None:
    """Forget the tuners and winners (tests)."""
    _TUNERS.clear()
    _SEEN.clear()
    _WINNERS.clear()
