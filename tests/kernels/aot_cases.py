"""The kernel configurations compiled ahead of time: name -> (kernel, pointer types, constexprs,
num_warps, num_stages). Every tile the launchers can choose on a GPU family (from the config table
in ``cmath_fast.kernels.configs``, that family's rows first) in bf16 with every flag on, plus
representative dtype and flag combinations; every tile in every dtype and flag combination with
CMATH_FAST_AOT_FULL=1."""

import itertools
import os

from tests.kernels.aot import TYPES

FULL = os.environ.get("CMATH_FAST_AOT_FULL") == "1"


def _cma():
    from cmath_fast.kernels import cross_modal_attention as cma
    return cma


def cma_fwd(dtype, bm, bn, bd, gates=True, dropout=True, joint=False, S=3, even_d=True, packed=False):
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "G", "O", "OU")}
    ptr.update(LSE="*fp32", QLEN="*i32", KVLEN="*i32", SEED="*i64", START="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_D=even_d, HAS_GATES=gates,
                 STORE_UNGATED=gates, JOINT=joint, HAS_DROPOUT=dropout, UPCAST=dtype == "fp32",
                 PRECISION="ieee" if dtype == "fp32" else "tf32", PACKED=packed)
    return _cma()._cma_fwd_kernel, ptr, const


def cma_bwd(which, dtype, bm, bn, bd, dropout=True, joint=False, S=3, packed=False):
    cma = _cma()
    kernel = cma._cma_bwd_dkdv_kernel if which == "dkdv" else cma._cma_bwd_dq_kernel
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "DO", "DK", "DV", "DQ")}
    ptr.update(LSE="*fp32", DELTA="*fp32", QLEN="*i32", KVLEN="*i32", SEED="*i64", START="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, JOINT=joint, HAS_DROPOUT=dropout,
                 UPCAST=dtype == "fp32", PRECISION="ieee" if dtype == "fp32" else "tf32", PACKED=packed)
    return kernel, ptr, const


def cma_preprocess(gates, packed=True):
    ptr = {"DO": "*bf16", "O": "*bf16", "OU": "*bf16", "G": "*bf16", "DELTA": "*fp32", "DG": "*fp32",
           "DOU": "*bf16", "QLEN": "*i32", "START": "*i32"}
    return _cma()._cma_bwd_preprocess_kernel, ptr, dict(S=3, BLOCK_M=64, BLOCK_D=128, HAS_GATES=gates,
                                                        PACKED=packed)


def launcher_cases(dtypes=("bf16",), family=""):
    """Every tile the launchers can choose on ``family`` (read from the config table), every flag on
    and packed rows (the model's path): these are also checked for spills."""
    from cmath_fast.kernels.configs import all_attention_tiles

    cases = {}
    for kernel, _, bd, dtype, t in all_attention_tiles(family):
        if dtype not in dtypes:
            continue
        tag = f"{dtype}-{t.block_m}x{t.block_n}-d{bd}-w{t.num_warps}s{t.num_stages}"
        if kernel == "cma_fwd":
            cases[f"launcher-fwd-{tag}"] = cma_fwd(dtype, t.block_m, t.block_n, bd, packed=True) + t[3:]
        elif kernel.startswith("cma_bwd_d"):
            which = kernel[len("cma_bwd_"):]
            cases[f"launcher-{which}-{tag}"] = cma_bwd(which, dtype, t.block_m, t.block_n, bd, packed=True) + t[3:]
        else:
            for gates in (False, True):
                k, ptr, const = cma_preprocess(gates)
                const = dict(const, BLOCK_M=t.block_m, BLOCK_D=bd)
                cases[f"launcher-preprocess-g{gates:d}-{tag}"] = (k, ptr, const) + t[3:]
    return cases


def fp16_subset(family=""):
    """A representative fp16 subset of the launchers' tiles: the attention kernels at the longest
    length bucket with the presets' head dims (64, 128), the U-Net's three tiles and the fusion
    GEMM at its largest buckets."""
    from cmath_fast.kernels.configs import all_attention_tiles
    from tests.kernels.aot_cases_fusion import fusion_cases, row_conv_cases

    cases = launcher_cases(("fp16",), family)
    names = set()
    for kernel, bucket, bd, dtype, t in all_attention_tiles(family):
        if dtype == "fp16" and bucket == 128 and bd in (64, 128) and kernel in ("cma_fwd", "cma_bwd_dkdv", "cma_bwd_dq"):
            names.add(f"launcher-{kernel[len('cma_'):].replace('bwd_', '')}-fp16-{t.block_m}x{t.block_n}-d{bd}-"
                      f"w{t.num_warps}s{t.num_stages}")
    out = {n: cases[n] for n in sorted(names)}
    out.update({n: c for n, c in fusion_cases(family, ("fp16",)).items() if n.startswith("launcher-fusion-fwd-fp16-64x64x64")})
    out.update({n: c for n, c in row_conv_cases(family, ("fp16",)).items() if "-k1-" not in n})
    return out


def attention_cases(family=""):
    cases = launcher_cases(tuple(TYPES) if FULL else ("bf16",), family)
    if FULL:
        from cmath_fast.kernels.configs import all_attention_tiles
        for kernel, _, bd, dtype, t in all_attention_tiles(family):
            for dropout, joint in itertools.product([False, True], repeat=2):
                tag = f"{dtype}-{t.block_m}x{t.block_n}-d{bd}-p{dropout:d}-j{joint:d}"
                if kernel == "cma_fwd":
                    for gates in (False, True):
                        cases[f"fwd-{tag}-g{gates:d}"] = cma_fwd(dtype, t.block_m, t.block_n, bd, gates, dropout,
                                                                 joint) + t[3:]
                elif kernel.startswith("cma_bwd_d"):
                    which = kernel[len("cma_bwd_"):]
                    cases[f"{which}-{tag}"] = cma_bwd(which, dtype, t.block_m, t.block_n, bd, dropout,
                                                      joint) + t[3:]
    else:
        cases["fwd-fp16-64x64-d64-joint"] = cma_fwd("fp16", 64, 64, 64, joint=True) + (4, 2)
        cases["fwd-fp32-32x32-d32"] = cma_fwd("fp32", 32, 32, 32) + (4, 2)
        cases["fwd-bf16-16x32-d16-plain"] = cma_fwd("bf16", 16, 32, 16, gates=False, dropout=False) + (2, 2)
        cases["fwd-bf16-64x64-d48-uneven"] = cma_fwd("bf16", 64, 64, 64, even_d=False) + (4, 2)
        cases["fwd-bf16-128x64-d128-padded"] = cma_fwd("bf16", 128, 64, 128) + (8, 2)
        cases["preprocess-bf16-d128-padded"] = cma_preprocess(True, packed=False) + (4, 1)
        for which in ("dkdv", "dq"):
            cases[f"{which}-bf16-64x64-d64-joint"] = cma_bwd(which, "bf16", 64, 64, 64, joint=True) + (4, 2)
            cases[f"{which}-fp32-32x32-d32"] = cma_bwd(which, "fp32", 32, 32, 32) + (4, 2)
    cases["dropout-mask"] = (_cma()._cma_dropout_mask_kernel, {"MASK": "*i8", "SEED": "*i64"},
                             dict(S=3, BLOCK_M=32, BLOCK_N=32), 4, 2)
    return cases


def autotune_cases():
    """The autotune candidates (kernels/autotune.py), bf16 (attention: packed rows; the fusion GEMM:
    d_z and d_in buckets 64): each kernel's largest tiles at head dim 128 (the most registers and
    shared memory); every candidate at head dims 64 and 128 with CMATH_FAST_AOT_FULL=1. Names
    start with "tune-"."""
    from cmath_fast.kernels.autotune import CANDIDATES

    cases = {}
    for bd in ((64, 128) if FULL else (128,)):
        for name, tiles in CANDIDATES.items():
            if not FULL:
                size = lambda t: t.block_m * max(t.block_n, 1) * max(t.block_k, 1)
                most = max(size(t) for t in tiles)
                tiles = [t for t in tiles if size(t) == most]
            for t in tiles:
                tag = f"{t.block_m}x{t.block_n}-d{bd}-w{t.num_warps}s{t.num_stages}"
                if name == "vf_fwd" or name.startswith("row_conv_"):
                    if bd != 128:  # no head dim: compiled once
                        continue
                    from tests.kernels.aot_cases_fusion import row_conv, vf_fwd
                    case = (vf_fwd("bf16", t.block_m, 64, 64) if name == "vf_fwd"
                            else row_conv(name[len("row_conv_"):], "bf16", t))
                elif name == "cma_fwd":
                    case = cma_fwd("bf16", t.block_m, t.block_n, bd, packed=True)
                elif name == "cma_bwd_preprocess":
                    k, ptr, const = cma_preprocess(True)
                    case = (k, ptr, dict(const, BLOCK_M=t.block_m, BLOCK_D=bd))
                else:
                    case = cma_bwd(name[len("cma_bwd_"):], "bf16", t.block_m, t.block_n, bd, packed=True)
                cases[f"tune-{name}-{tag}"] = case + (t.num_warps, t.num_stages)
    return cases


def all_cases(family=""):
    """Every case, with the launchers' tiles of ``family`` ("" for the generic rows)."""
    cases = attention_cases(family)
    cases.update(autotune_cases())
    from tests.kernels.aot_cases_fusion import (fusion_cases, layer_norm_cases, loss_cases, reconstruction_cases,
                                                 row_conv_cases)
    cases.update(fusion_cases(family))
    cases.update(row_conv_cases(family))
    if not FULL:
        cases.update(fp16_subset(family))
    cases.update(reconstruction_cases())
    cases.update(layer_norm_cases())
    cases.update(loss_cases())
    return cases
