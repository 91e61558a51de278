"""The kernel configurations compiled ahead of time for sm_90: name -> (kernel, pointer types,
constexprs, num_warps, num_stages). Representative by default; every configuration the launchers
can choose, in every dtype and flag combination, with CMATH_FAST_AOT_FULL=1."""

import itertools
import os

from tests.kernels.aot import TYPES

FULL = os.environ.get("CMATH_FAST_AOT_FULL") == "1"


def _cma():
    from cmath_fast.kernels import cross_modal_attention as cma
    return cma


def cma_fwd(dtype, bm, bn, bd, gates=True, dropout=True, joint=False, S=3):
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "G", "O", "OU")}
    ptr.update(LSE="*fp32", QLEN="*i32", KVLEN="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_D=True, HAS_GATES=gates,
                 STORE_UNGATED=gates, JOINT=joint, HAS_DROPOUT=dropout, UPCAST=dtype == "fp32",
                 PRECISION="ieee" if dtype == "fp32" else "tf32")
    return _cma()._cma_fwd_kernel, ptr, const


def cma_bwd(which, dtype, bm, bn, bd, dropout=True, joint=False, S=3):
    cma = _cma()
    kernel = cma._cma_bwd_dkdv_kernel if which == "dkdv" else cma._cma_bwd_dq_kernel
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "DO", "DK", "DV", "DQ")}
    ptr.update(LSE="*fp32", DELTA="*fp32", QLEN="*i32", KVLEN="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, JOINT=joint, HAS_DROPOUT=dropout,
                 UPCAST=dtype == "fp32", PRECISION="ieee" if dtype == "fp32" else "tf32")
    return kernel, ptr, const


def cma_preprocess(gates):
    ptr = {"DO": "*bf16", "O": "*bf16", "OU": "*bf16", "G": "*bf16", "DELTA": "*fp32", "DG": "*fp32",
           "DOU": "*bf16", "QLEN": "*i32"}
    return _cma()._cma_bwd_preprocess_kernel, ptr, dict(S=3, BLOCK_M=64, BLOCK_D=128, HAS_GATES=gates)


def attention_cases():
    cases = {}
    if FULL:
        for (kind, bm, bn, warps, stages, bd), dtype in itertools.product(_cma().launcher_configs(), TYPES):
            for dropout, joint in itertools.product([False, True], repeat=2):
                if kind == "fwd":
                    for gates in (False, True):
                        name = f"fwd-{dtype}-{bm}x{bn}-d{bd}-g{gates:d}-p{dropout:d}-j{joint:d}"
                        cases[name] = cma_fwd(dtype, bm, bn, bd, gates, dropout, joint) + (warps, stages)
                else:
                    for which in ("dkdv", "dq"):
                        name = f"{which}-{dtype}-{bm}x{bn}-d{bd}-p{dropout:d}-j{joint:d}"
                        cases[name] = cma_bwd(which, dtype, bm, bn, bd, dropout, joint) + (warps, stages)
    else:
        for bd in (16, 32, 64):
            cases[f"fwd-bf16-64x64-d{bd}"] = cma_fwd("bf16", 64, 64, bd) + (4, 2)
        cases["fwd-fp16-64x64-d64-joint"] = cma_fwd("fp16", 64, 64, 64, joint=True) + (4, 2)
        cases["fwd-fp32-32x32-d32"] = cma_fwd("fp32", 32, 32, 32) + (4, 2)
        cases["fwd-bf16-16x32-d16-plain"] = cma_fwd("bf16", 16, 32, 16, gates=False, dropout=False) + (2, 2)
        for which in ("dkdv", "dq"):
            cases[f"{which}-bf16-64x64-d64-joint"] = cma_bwd(which, "bf16", 64, 64, 64, joint=True) + (4, 2)
            cases[f"{which}-fp32-32x32-d32"] = cma_bwd(which, "fp32", 32, 32, 32) + (4, 2)
    # The launchers' largest tiles (checked for spills too), every flag on.
    cases["largest-fwd-d128"] = cma_fwd("bf16", 64, 64, 128) + (8, 2)
    cases["largest-fwd-d64-128rows"] = cma_fwd("bf16", 128, 64, 64) + (8, 2)
    cases["largest-dkdv-d128"] = cma_bwd("dkdv", "bf16", 32, 64, 128) + (8, 2)
    cases["largest-dq-d128"] = cma_bwd("dq", "bf16", 32, 64, 128) + (8, 2)
    cases["largest-dkdv-d64"] = cma_bwd("dkdv", "bf16", 64, 64, 64) + (4, 2)
    cases["largest-dq-d64"] = cma_bwd("dq", "bf16", 64, 64, 64) + (4, 2)
    for gates in (False, True):
        cases[f"preprocess-g{gates:d}"] = cma_preprocess(gates) + (4, 2)
    cases["dropout-mask"] = (_cma()._cma_dropout_mask_kernel, {"MASK": "*i8"},
                             dict(S=3, BLOCK_M=32, BLOCK_N=32), 4, 2)
    return cases


def all_cases():
    cases = attention_cases()
    try:
        from tests.kernels.aot_cases_fusion import fusion_cases
    except ImportError:
        return cases
    cases.update(fusion_cases())
    return cases
