"""Ahead-of-time compile cases of the variational-fusion, U-Net row-convolution and loss kernels
(see aot_cases.py)."""

from tests.kernels.aot import TYPES
from tests.kernels.aot_cases import FULL


def _vf():
    from cmath_fast.kernels import variational_fusion as vf
    return vf


def vf_fwd(dtype, bn, bz, bk, sample=True, has_eps=False):
    ptr = {"E": TYPES[dtype], "W": TYPES[dtype], "BIAS": TYPES[dtype], "EPS": "*fp32", "Z": TYPES[dtype],
           "HOUT": "*fp32", "KLP": "*fp32", "ROWMASK": "*u8", "SEED": "*i64"}
    const = dict(BLOCK_N=bn, BLOCK_Z=bz, BLOCK_K=bk, HAS_BIAS=True, HAS_EPS=has_eps, SAMPLE=sample,
                 RETURN_EPS=not has_eps, SAVE_H=True, HAS_ROWMASK=True, UPCAST=dtype == "fp32",
                 PRECISION="ieee" if dtype == "fp32" else "tf32")
    return _vf()._vf_fwd_kernel, ptr, const


def vf_bwd(dtype, bn, bz):
    ptr = {"HSAVED": "*fp32", "DZ": TYPES[dtype], "DKL": TYPES[dtype], "EPS": "*fp32", "ROWMASK": "*u8",
           "DH": TYPES[dtype], "SEED": "*i64"}
    const = dict(BLOCK_N=bn, BLOCK_Z=bz, HAS_DZ=True, HAS_DKL=True, HAS_EPS=False, SAMPLE=True,
                 HAS_ROWMASK=True)
    return _vf()._vf_bwd_kernel, ptr, const


def poe(kind, dtype, bn, bz, M=3):
    vf = _vf()
    if kind == "fwd":
        ptr = {"MU": TYPES[dtype], "LV": TYPES[dtype], "EPS": "*fp32", "Z": TYPES[dtype], "KLP": "*fp32",
               "ROWMASK": "*u8", "SEED": "*i64"}
        const = dict(M=M, BLOCK_N=bn, BLOCK_Z=bz, HAS_EPS=False, SAMPLE=True, RETURN_EPS=True,
                     HAS_ROWMASK=True)
        return vf._poe_fwd_kernel, ptr, const
    ptr = {"MU": TYPES[dtype], "LV": TYPES[dtype], "DZ": TYPES[dtype], "DKL": TYPES[dtype], "EPS": "*fp32",
           "ROWMASK": "*u8", "DMU": TYPES[dtype], "DLV": TYPES[dtype], "SEED": "*i64"}
    const = dict(M=M, BLOCK_N=bn, BLOCK_Z=bz, HAS_DZ=True, HAS_DKL=True, HAS_EPS=False, SAMPLE=True,
                 HAS_ROWMASK=True)
    return vf._poe_bwd_kernel, ptr, const


def fusion_cases():
    """Every fusion tile the launchers can choose (from the config table; checked for spills),
    plus representative dtype and flag combinations."""
    from cmath_fast.kernels.configs import all_fusion_tiles

    cases = {}
    dtypes = list(TYPES) if FULL else ["bf16"]
    for kernel, bz, bk, dtype, t in all_fusion_tiles():
        if dtype not in dtypes:
            continue
        launch = (t.num_warps, t.num_stages)
        if kernel == "vf_fwd":
            cases[f"launcher-fusion-fwd-{dtype}-{t.block_m}x{bz}x{bk}"] = vf_fwd(dtype, t.block_m, bz, bk) + launch
        else:
            cases[f"launcher-fusion-bwd-{dtype}-{t.block_m}x{bz}"] = vf_bwd(dtype, t.block_m, bz) + launch
            for kind in ("fwd", "bwd"):
                cases[f"launcher-fusion-poe-{kind}-{dtype}-{t.block_m}x{bz}"] = poe(kind, dtype, t.block_m, bz) + launch
    cases["fusion-fwd-fp32-64x64x64"] = vf_fwd("fp32", 64, 64, 64) + (8, 3)
    cases["fusion-fwd-fp16-64x64x64-eps"] = vf_fwd("fp16", 64, 64, 64, has_eps=True) + (8, 3)
    return cases


def row_conv(kernel, dtype, t, K=3, act=1):
    from cmath_fast.kernels import row_conv as rc
    tp = TYPES[dtype]
    flags = dict(K=K, PAD=K // 2, ACT=act, BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k,
                 UPCAST=dtype == "fp32", PRECISION="ieee" if dtype == "fp32" else "tf32")
    ints = {"POS": "*i32", "LEN": "*i32"}
    if kernel == "fwd":
        ptr = dict(X=tp, W=tp, BIAS=tp, Y=tp, PRE=tp, **ints)
        return rc._row_conv_fwd_kernel, ptr, dict(flags, HAS_BIAS=True, SAVE_PRE=True)
    if kernel == "bwd_dx":
        ptr = dict(DY=tp, PRE=tp, W=tp, DX=tp, **ints)
        return rc._row_conv_bwd_dx_kernel, ptr, flags
    ptr = dict(X=tp, DY=tp, PRE=tp, DW="*fp32", DB="*fp32", **ints)
    return rc._row_conv_bwd_dw_kernel, ptr, dict(flags, HAS_BIAS=True)


def row_conv_cases():
    """Every row-convolution tile a launcher can choose (checked for spills), k = 3 with GELU, and
    the decoder's k = 1 without."""
    from cmath_fast.kernels.configs import all_row_conv_tiles

    cases = {}
    dtypes = list(TYPES) if FULL else ["bf16"]
    for kernel, dtype, t in all_row_conv_tiles():
        if dtype not in dtypes:
            continue
        launch = (t.num_warps, t.num_stages)
        cases[f"launcher-rowconv-{kernel}-{dtype}-{t.block_m}x{t.block_n}x{t.block_k}"] = row_conv(kernel, dtype, t) + launch
        if dtype == "bf16":
            cases[f"rowconv-{kernel}-k1-linear"] = row_conv(kernel, dtype, t, K=1, act=0) + launch
    return cases


def loss_cases():
    """The loss's classification-rows kernels at the launchers' tile, K = 6 and 7 classes (BLOCK_K 8),
    three fine heads: checked for spills."""
    from cmath_fast.kernels import loss
    cases = {}
    for dtype in (list(TYPES) if FULL else ["bf16", "fp32"]):
        tp = TYPES[dtype]
        ptr = {"Z": tp, "F": tp, "Y": "*i64", "CE": "*fp32", "FCE": "*fp32", "KD": "*fp32"}
        cases[f"launcher-loss-fwd-{dtype}"] = (loss._cls_fwd_kernel, ptr, dict(C=3, BLOCK_N=loss.BLOCK_N, BLOCK_K=8),
                                               4, 1)
        ptr = {"Z": tp, "F": tp, "Y": "*i64", "DCE": "*fp32", "DFCE": "*fp32", "DKD": "*fp32", "DZ": tp, "DF": tp}
        cases[f"launcher-loss-bwd-{dtype}"] = (loss._cls_bwd_kernel, ptr,
                                               dict(C=3, TEACHER_GRAD=True, BLOCK_N=loss.BLOCK_N, BLOCK_K=8), 4, 1)
    return cases
