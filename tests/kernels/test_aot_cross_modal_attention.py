"""Every attention kernel compiles for Hopper (sm_90) without a GPU, fits an H100's shared memory,
uses wgmma for fp16/bf16 tiles of 64 rows or more, and (for the largest tiles) does not spill.

A representative set runs by default (each compile takes seconds); CMATH_FAST_AOT_FULL=1 compiles
every configuration the launchers can choose, in every dtype and flag combination."""

import itertools
import os

import pytest

from cmath_fast.kernels import cross_modal_attention as cma
from tests.kernels.aot import H100_SMEM, TYPES, compile_sm90, ptxas_report

FULL = os.environ.get("CMATH_FAST_AOT_FULL") == "1"
SCALARS = {"sm_scale": "fp32", "p_drop": "fp32", "seed": "i64"}


def _fwd(dtype, bm, bn, bd, gates=True, dropout=True, joint=False, S=3):
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "G", "O", "OU")}
    ptr.update(LSE="*fp32", QLEN="*i32", KVLEN="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, EVEN_D=True, HAS_GATES=gates,
                 STORE_UNGATED=gates, JOINT=joint, HAS_DROPOUT=dropout, UPCAST=dtype == "fp32",
                 PRECISION="ieee" if dtype == "fp32" else "tf32")
    return cma._cma_fwd_kernel, ptr, const


def _bwd(kernel, dtype, bm, bn, bd, dropout=True, joint=False, S=3):
    ptr = {n: TYPES[dtype] for n in ("Q", "K", "V", "DO", "DK", "DV", "DQ")}
    ptr.update(LSE="*fp32", DELTA="*fp32", QLEN="*i32", KVLEN="*i32")
    const = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, JOINT=joint,
                 HAS_DROPOUT=dropout, UPCAST=dtype == "fp32",
                 PRECISION="ieee" if dtype == "fp32" else "tf32")
    return kernel, ptr, const


def _cases():
    if FULL:
        for (kind, bm, bn, warps, stages, bd), dtype in itertools.product(cma.launcher_configs(), TYPES):
            for dropout, joint in itertools.product([False, True], repeat=2):
                if kind == "fwd":
                    for gates in (False, True):
                        flags = dict(gates=gates, dropout=dropout, joint=joint)
                        yield (f"fwd-{dtype}-{bm}x{bn}-d{bd}-{flags}",
                               _fwd(dtype, bm, bn, bd, **flags), warps, stages)
                    continue
                flags = dict(dropout=dropout, joint=joint)
                for name, k in (("dkdv", cma._cma_bwd_dkdv_kernel), ("dq", cma._cma_bwd_dq_kernel)):
                    yield (f"{name}-{dtype}-{bm}x{bn}-d{bd}-{flags}",
                           _bwd(k, dtype, bm, bn, bd, **flags), warps, stages)
        return
    # Representative (the launchers' configs, see launcher_configs): every head dim in bf16 at the
    # common 64-row tile; each dtype; the smallest and largest tiles; joint mode.
    for bd in (16, 32, 64):
        yield f"fwd-bf16-64x64-d{bd}", _fwd("bf16", 64, 64, bd), 4, 2
    yield "fwd-bf16-64x64-d128-w8", _fwd("bf16", 64, 64, 128), 8, 2
    yield "fwd-fp16-64x64-d64-joint", _fwd("fp16", 64, 64, 64, joint=True), 4, 2
    yield "fwd-fp32-32x32-d32", _fwd("fp32", 32, 32, 32), 4, 2
    yield "fwd-bf16-128x64-d64-w8", _fwd("bf16", 128, 64, 64), 8, 2
    yield "fwd-bf16-16x32-d16-nogates", _fwd("bf16", 16, 32, 16, gates=False, dropout=False), 2, 2
    for name, k in (("dkdv", cma._cma_bwd_dkdv_kernel), ("dq", cma._cma_bwd_dq_kernel)):
        yield f"{name}-bf16-64x64-d64-joint", _bwd(k, "bf16", 64, 64, 64, joint=True), 4, 2
        yield f"{name}-fp32-32x32-d32", _bwd(k, "fp32", 32, 32, 32), 4, 2


CASES = list(_cases())


@pytest.mark.parametrize("name, case, warps, stages", CASES, ids=[c[0] for c in CASES])
def test_compiles_for_sm90(name, case, warps, stages):
    kernel, ptr, const = case
    k = compile_sm90(kernel, ptr, const, num_warps=warps, num_stages=stages, scalar_types=SCALARS)
    assert k.metadata.shared <= H100_SMEM, f"{name}: {k.metadata.shared} bytes of shared memory"
    ptx = k.asm["ptx"]
    big_tile = min(const["BLOCK_M"], const["BLOCK_N"]) >= 64
    if not const["UPCAST"] and big_tile:
        assert "wgmma" in ptx, f"{name}: a 16-bit tile of 64+ rows should use wgmma"
    if not const["UPCAST"] and not big_tile:
        assert "mma" in ptx, f"{name}: 16-bit dots should use tensor cores"


def test_preprocess_and_mask_kernels_compile():
    for gates in (False, True):
        k = compile_sm90(cma._cma_bwd_preprocess_kernel,
                         {"DO": "*bf16", "O": "*bf16", "OU": "*bf16", "G": "*bf16", "DELTA": "*fp32",
                          "DG": "*fp32", "DOU": "*bf16", "QLEN": "*i32"},
                         dict(S=3, BLOCK_M=64, BLOCK_D=128, HAS_GATES=gates))
        assert k.metadata.shared <= H100_SMEM
    k = compile_sm90(cma._cma_dropout_mask_kernel, {"MASK": "*i8"},
                     dict(S=3, BLOCK_M=32, BLOCK_N=32), scalar_types=SCALARS)
    assert "ptx" in k.asm


# The launchers' largest tiles per kernel (see fwd_config / bwd_config), with every flag on.
LARGEST = [
    ("fwd-d128", lambda: _fwd("bf16", 64, 64, 128), 8),
    ("fwd-d64-128rows", lambda: _fwd("bf16", 128, 64, 64), 8),
    ("dkdv-d128", lambda: _bwd(cma._cma_bwd_dkdv_kernel, "bf16", 32, 64, 128), 8),
    ("dq-d128", lambda: _bwd(cma._cma_bwd_dq_kernel, "bf16", 32, 64, 128), 8),
    ("dkdv-d64", lambda: _bwd(cma._cma_bwd_dkdv_kernel, "bf16", 64, 64, 64), 4),
    ("dq-d64", lambda: _bwd(cma._cma_bwd_dq_kernel, "bf16", 64, 64, 64), 4),
]


@pytest.mark.parametrize("which, case, warps", LARGEST, ids=[c[0] for c in LARGEST])
def test_largest_tiles_do_not_spill(which, case, warps, tmp_path):
    kernel, ptr, const = case()
    kind = "fwd" if which.startswith("fwd") else "bwd"
    chosen = (kind, const["BLOCK_M"], const["BLOCK_N"], warps, 2, const["BLOCK_D"])
    assert chosen in cma.launcher_configs(), f"{which}: {chosen} is not a config the launchers use"
    k = compile_sm90(kernel, ptr, const, num_warps=warps, num_stages=2, scalar_types=SCALARS)
    report = ptxas_report(k, tmp_path)
    if report is None:
        pytest.skip("Triton's bundled ptxas is not in this installation")
    regs, spills = report
    assert spills == 0, f"{which}: {spills} bytes of spills with {regs} registers"
