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


def fusion_cases(family="", dtypes=None):
    """Every fusion tile the launchers can choose on ``family`` (from the config table; checked for
    spills), plus representative dtype and flag combinations."""
    from cmath_fast.kernels.configs import all_fusion_tiles

    cases = {}
    dtypes = dtypes or (list(TYPES) if FULL else ["bf16"])
    for kernel, bz, bk, dtype, t in all_fusion_tiles(family):
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


def row_conv(kernel, dtype, t, K=3, act=1, G=3, xb=False):
    """A row-convolution kernel for G groups (the three modalities' U-Nets), with a second input
    (the decoder's skip connection) and the reconstruction partial sums when ``xb``."""
    from cmath_fast.kernels import row_conv as rc
    tp = TYPES[dtype]
    flags = dict(K=K, PAD=K // 2, ACT=act, G=G, HAS_XB=xb, BLOCK_M=t.block_m, BLOCK_N=t.block_n,
                 BLOCK_K=t.block_k, UPCAST=dtype == "fp32", PRECISION="ieee" if dtype == "fp32" else "tf32")
    ints = {"POS": "*i32", "LEN": "*i32"}
    if kernel == "fwd":
        ptr = dict(X=tp, XB=tp, W0=tp, W1=tp, W2=tp, B0=tp, B1=tp, B2=tp, Y=tp, PRE=tp, REF="*fp32",
                   PART="*fp32", **ints)
        return rc._row_conv_fwd_kernel, ptr, dict(flags, HAS_BIAS=True, SAVE_PRE=act != 0, REC=xb)
    if kernel == "bwd_dx":
        ptr = dict(DY=tp, PRE=tp, W0=tp, W1=tp, W2=tp, DX=tp, DXB=tp, **ints)
        return rc._row_conv_bwd_dx_kernel, ptr, flags
    ptr = dict(X=tp, XB=tp, DY=tp, PRE=tp, DW="*fp32", DB="*fp32", **ints)
    return rc._row_conv_bwd_dw_kernel, ptr, dict(flags, HAS_BIAS=True)


def row_conv_cases(family="", dtypes=None):
    """Every row-convolution tile a launcher can choose (checked for spills), three groups, k = 3
    with GELU, and the decoder's k = 1 without, reading the skip connection as a second input and
    writing the reconstruction partial sums; one group (``row_conv``'s single convolution)."""
    from cmath_fast.kernels.configs import all_row_conv_tiles

    cases = {}
    dtypes = dtypes or (list(TYPES) if FULL else ["bf16"])
    for kernel, dtype, t in all_row_conv_tiles(family):
        if dtype not in dtypes:
            continue
        launch = (t.num_warps, t.num_stages)
        cases[f"launcher-rowconv-{kernel}-{dtype}-{t.block_m}x{t.block_n}x{t.block_k}"] = row_conv(kernel, dtype, t) + launch
        cases[f"launcher-rowconv-{kernel}-{dtype}-k1-skip"] = row_conv(kernel, dtype, t, K=1, act=0, xb=True) + launch
        if dtype == "bf16":
            cases[f"rowconv-{kernel}-one-group"] = row_conv(kernel, dtype, t, G=1) + launch
    return cases


def reconstruction_cases():
    """The U-Nets' standardisation and reconstruction-loss kernels (three groups): spills checked."""
    from cmath_fast.kernels import reconstruction as rk
    cases = {}
    blocks = dict(BLOCK_M=rk.BLOCK_M, BLOCK_D=rk.BLOCK_D)
    for dtype in (list(TYPES) if FULL else ["bf16", "fp32"]):
        tp = TYPES[dtype]
        ptr = dict(X0=tp, X1=tp, X2=tp, M0=tp, M1=tp, M2=tp, SD0=tp, SD1=tp, SD2=tp, SRC="*i64", OUT=tp,
                   POS="*i32", LEN="*i32")
        cases[f"launcher-standardise-{dtype}"] = (rk._standardise_kernel, ptr, dict(HAS_SRC=True, G=3, **blocks), 4, 1)
        ptr = dict(XHAT=tp, REF="*fp32", GREC="*fp32", NV="*fp32", DXHAT=tp, POS="*i32", LEN="*i32")
        cases[f"launcher-rec-bwd-{dtype}"] = (rk._rec_bwd_kernel, ptr, dict(G=3, **blocks), 4, 1)
    ptr = dict(PART="*fp32", POS="*i32", LEN="*i32", REC="*fp32", NV="*fp32")
    cases["launcher-rec-total"] = (rk._rec_total_kernel, ptr, dict(BLOCK=rk.BLOCK_R), 4, 1)
    return cases


def layer_norm_cases():
    """The stacked LayerNorm at d 256 and 1024 (the presets' widths): spills checked."""
    from cmath_fast.kernels import layer_norm as ln
    cases = {}
    for dtype in (list(TYPES) if FULL else ["bf16", "fp32"]):
        tp = TYPES[dtype]
        for d in (256, 1024):
            block_d, block_r = ln._blocks(d)
            ptr = dict(X=tp, W=tp, B=tp, Y=tp, MEAN="*fp32", RSTD="*fp32")
            cases[f"launcher-layernorm-fwd-{dtype}-d{d}"] = (ln._ln_fwd_kernel, ptr,
                                                             dict(BLOCK_R=block_r, BLOCK_D=block_d),
                                                             ln.fwd_warps(block_d), 1)
            ptr = dict(DY=tp, X=tp, W=tp, MEAN="*fp32", RSTD="*fp32", DX=tp, DW="*fp32", DB="*fp32")
            cases[f"launcher-layernorm-bwd-{dtype}-d{d}"] = (
                ln._ln_bwd_kernel, ptr, dict(BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_C=ln.BLOCK_C,
                                             BLOCK_RR=ln.BLOCK_RR), 4, 1)
    return cases


def loss_cases():
    """The fused loss's kernels at the launchers' tiles, K = 6 and 7 classes (BLOCK_K 8), three fine
    heads, d 1024: checked for spills."""
    from cmath_fast.kernels import loss
    cases = {}
    for dtype in (list(TYPES) if FULL else ["bf16", "fp32"]):
        tp = TYPES[dtype]
        rows = {"Z": tp, "F": tp, "Y": "*i64", "VALID": "*u8", "CW": "*fp32", "FINE": tp, "COARSE": tp}
        const = dict(C=3, HAS_CW=True, BLOCK_N=loss.BLOCK_N, BLOCK_K=8, BLOCK_D=loss._block_d(1024))
        cases[f"launcher-loss-rows-{dtype}"] = (loss._loss_rows_kernel, dict(rows, KL="*fp32", PART="*fp32"),
                                                dict(const, HAS_KL=True, FEAT=True), loss.NUM_WARPS, 1)
        ptr = dict(rows, TERMS="*fp32", GT="*fp32", DZ=tp, DF=tp, DFINE=tp, DKL="*fp32", DREC="*fp32")
        cases[f"launcher-loss-bwd-{dtype}"] = (loss._loss_bwd_kernel, ptr,
                                               dict(const, TEACHER_GRAD=True, NEED_FINE=True, NEED_KL=True,
                                                    NEED_REC=True), loss.NUM_WARPS, 1)
    ptr = {"PART": "*fp32", "REC": "*fp32", "BETA": "*fp32", "TOTAL": "*fp32", "TERMS": "*fp32"}
    cases["launcher-loss-total"] = (loss._loss_total_kernel, ptr, dict(HAS_REC=True, HAS_BETA=True,
                                                                       BLOCK_P=loss.BLOCK_P), 4, 1)
    return cases
