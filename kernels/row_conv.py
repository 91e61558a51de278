"""Convolution over the utterance axis on the row-major layout (Triton): the U-Net's k-tap Conv1d
without the channel-first transposes around it, with bias, activation and the padding mask fused,
for up to three groups (the three modalities' U-Nets) in one launch.

Rows are utterances: x (N, C_in) with one row per utterance, in any order of dialogues (the padded
B x L layout flattened, or packed rows). Row r belongs to a dialogue of length LEN[r] at position
POS[r] in it; a row with POS[r] >= LEN[r] is padding. For a valid row r and tap j (t = j - PAD),

    pre[r] = b + sum_j x[r + t] W[:, :, j]^T     over the taps whose neighbour 0 <= POS[r] + t < LEN[r]
    y[r]   = act(pre[r]),   y = 0 on padding rows

which is ``Conv1d(C_in, C_out, K, padding=PAD)`` over each dialogue zero-padded at both ends: a
shifted row never crosses into the next dialogue, and padding rows are never read (their gradient
is zero). The kernels read the weight tap-major, (K, C_in, C_out) — the Conv1d weight (C_out, C_in,
K) permuted, a copy the caller makes in the same pass as autocast's cast — so that a tile of it
is a run of consecutive output channels (16-byte loads) instead of elements K apart; the weight
gradient is written in the Conv1d layout, fp32 (the master weight's own).

Groups: G <= 3 convolutions over the same rows with their own weights, input and output widths,
in one launch (the grid's last axis; a group with fewer channel tiles than the widest writes
zeros in the rest). The inputs are one (G, N, C_X) tensor (group g reads its first CI_g
channels); an optional second input XB (G, N, C_B) continues each group's channels, as the
concatenation [x_g | xb_g] would, without the copy (the U-Net's skip connection). Outputs are one
(G, N, C_Y) tensor, C_Y the widest CO_g rounded up to a multiple of 16, zero past each group's CO_g
channels.

Kernels (each an implicit GEMM: the taps are K shifted loads of the same rows, no im2col buffer):
    fwd     y (and pre, saved for backward when act is GELU) — tiles of (rows, C_out); optionally
            the reconstruction loss's partial sums of (y - ref)^2 / CO_g per tile (``REC``)
    bwd_dx  dx[r] = sum_j g[r - t] W[:, :, j], g = dy * act'(pre) on valid rows — tiles of (rows, C_in)
    bwd_dw  dW[:, :, j] = sum_r g[r]^T x[r + t] and db = sum_r g[r] — one program per (C_out tile,
            C_in tile, group, up to three taps) looping over all rows in a fixed order: deterministic,
            no atomics; g computed once per row chunk for all the program's taps.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import dot_precision, launch, stride_units, upcast
from .autotune import launch_tile
from .configs import ANY, dtype_name, row_conv_tile

SQRT1_2 = tl.constexpr(0.7071067811865476)
INV_SQRT_2PI = tl.constexpr(0.3989422804014327)


@triton.jit
def _act(x, ACT: tl.constexpr):
    if ACT == 1:  # exact GELU, as F.gelu's default
        x = 0.5 * x * (1.0 + tl.erf(x * SQRT1_2))
    return x


@triton.jit
def _grad_pre(dy, pre, ACT: tl.constexpr):
    """dL/dpre from dL/dy: dy * act'(pre)."""
    if ACT == 1:
        cdf = 0.5 * (1.0 + tl.erf(pre * SQRT1_2))
        dy = dy * (cdf + pre * INV_SQRT_2PI * tl.exp(-0.5 * pre * pre))
    return dy


@triton.jit
def _rows(POS, LEN, offs, N):
    """Position in the dialogue, dialogue length and validity of each row of a tile."""
    in_n = offs < N
    pos = tl.load(POS + offs, mask=in_n, other=0)
    ln = tl.load(LEN + offs, mask=in_n, other=0)
    return pos, ln, in_n & (pos < ln)


@triton.jit
def _output_tile(POS, LEN, N, C, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's (BLOCK_M rows, BLOCK_N of C channels) output tile: offsets, the reduction
    step's offsets, each row's position, dialogue length and validity, and the channel mask."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    pos, ln, row_ok = _rows(POS, LEN, offs_m, N)
    return offs_m, offs_n, tl.arange(0, BLOCK_K), pos, ln, row_ok, offs_n < C


@triton.jit
def _pick(g, a0, a1, a2, G: tl.constexpr):
    """Group g's value of a per-group argument (G <= 3 groups)."""
    a = a0
    if G > 1:
        if g == 1:
            a = a1
    if G > 2:
        if g == 2:
            a = a2
    return a


@triton.jit
def _load_grad(DY, PRE, g, N, C_Y, rows, cols, ok, ACT: tl.constexpr):
    """g = dy * act'(pre) for a (rows, output channels) tile of group g, fp32, zero outside ``ok``."""
    at = g * N * C_Y + rows[:, None] * C_Y + cols[None, :]
    gr = tl.load(DY + at, mask=ok, other=0.0).to(tl.float32)
    if ACT != 0:
        gr = _grad_pre(gr, tl.load(PRE + at, mask=ok, other=0.0).to(tl.float32), ACT)
    return gr


@triton.jit
def _acc_taps(acc, X, src, src_ok, offs_k, offs_n, W, w_first, C, C_rd, C_w, WS, j,
              BLOCK_K: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """acc += the rows X[src] (C channels, unit channel stride; X already offset to the group and
    scaled by the row stride in ``src``) times tap j of W's input channels [w_first, w_first + C)
    (W tap-major (K, C_w, C_out) with row stride WS >= C_out, a multiple of 16, zero past C_out: a
    row of the tile is whole 16-byte runs of consecutive output channels). X's rows are read up to
    C_rd >= C channels (whole 16-byte runs where C_rd is a multiple of 16): the weight's rows past C
    are masked to zero, so those columns add nothing."""
    for c0 in range(0, C, BLOCK_K):
        kk = c0 + offs_k
        k_ok = kk < C
        x = tl.load(X + src[:, None] + kk[None, :], mask=src_ok[:, None] & (kk < C_rd)[None, :], other=0.0)
        w = tl.load(W + j * (C_w * WS) + (w_first + kk)[:, None] * WS + offs_n[None, :],
                    mask=k_ok[:, None] & (offs_n < WS)[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc += tl.dot(x, w, input_precision=PRECISION)
    return acc


# Only what changes from batch to batch is left unspecialised (N, the group strides N x C, the
# grid's block counts): a new batch never compiles a new variant. The channel widths and row
# strides are the model's, fixed per layer: specialised, so that Triton can prove 16-byte runs
# (vector and asynchronous loads) where a width is a multiple of 16.
_FWD_DNS = ["N", "stride_xg", "stride_bg", "n_m", "n_n"]


@triton.jit(do_not_specialize=_FWD_DNS)
def _row_conv_fwd_kernel(
    X, XB, W0, W1, W2, B0, B1, B2, Y, PRE, REF, PART, POS, LEN,
    N, stride_xg, stride_xn, stride_bg, stride_bn, SU, CI0, CI1, CI2, XR0, XR1, XR2, CO0, CO1, CO2, WS0, WS1, WS2,
    C_B, C_Y, C_R, n_m, n_n,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_XB: tl.constexpr,
    SAVE_PRE: tl.constexpr, REC: tl.constexpr, G: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """X (G, N, >= CI_g) and XB (G, N, C_B) with unit channel strides; W_g (K, CI_g + C_B, CO_g) and
    B_g (CO_g,) contiguous; Y, PRE (G, N, C_Y) contiguous; POS, LEN (N,) int32. REC: REF (G, N, C_R)
    contiguous, PART (G, n_m, n_n) fp32 <- sum over the tile's valid rows of (y - ref)^2 / CO_g.
    The group strides come as counts of SU elements (``stride_units``). W_g's padding columns
    (CO_g up to WS_g) are zero: the tiles read whole 16-byte runs of a weight row. XR_g: how far
    group g's rows of X are read (``_read_widths``).
    One (BLOCK_M rows, BLOCK_N channels) tile of group program_id(2)."""
    g = tl.program_id(2)
    stride_xg = stride_xg * SU
    stride_bg = stride_bg * SU
    W = _pick(g, W0, W1, W2, G)
    BIAS = _pick(g, B0, B1, B2, G)
    C_in = _pick(g, CI0, CI1, CI2, G)
    X_rd = _pick(g, XR0, XR1, XR2, G)
    C_out = _pick(g, CO0, CO1, CO2, G)
    WS = _pick(g, WS0, WS1, WS2, G)
    C_w = C_in + C_B
    offs_m, offs_n, offs_k, pos, ln, row_ok, col_ok = _output_tile(POS, LEN, N, C_out, BLOCK_M, BLOCK_N, BLOCK_K)
    out = g * N * C_Y + offs_m[:, None] * C_Y + offs_n[None, :]
    out_mask = (offs_m < N)[:, None] & (offs_n < C_Y)[None, :]
    part = (g * n_m + tl.program_id(0)) * n_n + tl.program_id(1)
    if tl.program_id(1) * BLOCK_N < C_out:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for j in tl.static_range(K):
            src_ok = row_ok & (pos + (j - PAD) >= 0) & (pos + (j - PAD) < ln)
            src = offs_m + (j - PAD)
            acc = _acc_taps(acc, X + g * stride_xg, src * stride_xn, src_ok, offs_k, offs_n, W, 0, C_in, X_rd,
                            C_w, WS, j, BLOCK_K, UPCAST, PRECISION)
            if HAS_XB:
                acc = _acc_taps(acc, XB + g * stride_bg, src * stride_bn, src_ok, offs_k, offs_n, W, C_in,
                                C_B, C_B, C_w, WS, j, BLOCK_K, UPCAST, PRECISION)
        if HAS_BIAS:
            acc += tl.load(BIAS + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if SAVE_PRE:
            tl.store(PRE + out, acc.to(PRE.dtype.element_ty), mask=out_mask)
        y = tl.where(row_ok[:, None] & col_ok[None, :], _act(acc, ACT), 0.0).to(Y.dtype.element_ty)
        tl.store(Y + out, y, mask=out_mask)
        if REC:
            ok = row_ok[:, None] & col_ok[None, :]
            ref = tl.load(REF + g * N * C_R + offs_m[:, None] * C_R + offs_n[None, :],
                          mask=row_ok[:, None] & (offs_n < C_R)[None, :], other=0.0)
            d = tl.where(ok, y.to(tl.float32) - ref.to(tl.float32), 0.0)
            tl.store(PART + part, tl.sum(tl.sum(d * d, 1), 0) / C_out)
    else:  # past this group's channels: zeros (and a zero partial sum)
        tl.store(Y + out, tl.zeros((BLOCK_M, BLOCK_N), dtype=Y.dtype.element_ty), mask=out_mask)
        if SAVE_PRE:
            tl.store(PRE + out, tl.zeros((BLOCK_M, BLOCK_N), dtype=PRE.dtype.element_ty), mask=out_mask)
        if REC:
            tl.store(PART + part, 0.0)


@triton.jit(do_not_specialize=["N"])
def _row_conv_bwd_dx_kernel(
    DY, PRE, W0, W1, W2, DX, DXB, POS, LEN,
    N, CI0, CI1, CI2, CO0, CO1, CO2, WS0, WS1, WS2, C_B, C_Y, C_X,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr, HAS_XB: tl.constexpr, G: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """DY, PRE (G, N, C_Y) contiguous (PRE: ACT only); DX (G, N, C_X), DXB (G, N, C_B) contiguous.
    One (BLOCK_M rows, BLOCK_N input channels of [x_g | xb_g]) tile of group program_id(2),
    reducing over CO_g and the taps; zeros past the group's channels."""
    g = tl.program_id(2)
    W = _pick(g, W0, W1, W2, G)
    C_in = _pick(g, CI0, CI1, CI2, G)
    WS = _pick(g, WS0, WS1, WS2, G)  # the reduction runs over the padded output channels (zero weights past CO_g)
    C_w = C_in + C_B
    offs_m, offs_n, offs_k, pos, ln, row_ok, col_ok = _output_tile(POS, LEN, N, C_w, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if tl.program_id(1) * BLOCK_N < C_w:
        for j in tl.static_range(K):
            # row r receives from the output row r - t through tap j when that row is in its dialogue
            dst_ok = row_ok & (pos - (j - PAD) >= 0) & (pos - (j - PAD) < ln)
            dst = offs_m - (j - PAD)
            # over the output channels up to the weight's padded row width WS (zero weights past
            # C_out: whole 16-byte runs of dy and of the weight, whatever C_out is)
            for c0 in range(0, WS, BLOCK_K):
                kk = c0 + offs_k
                k_ok = kk < WS
                gr = _load_grad(DY, PRE, g, N, C_Y, dst, kk, dst_ok[:, None] & k_ok[None, :], ACT)
                w = tl.load(W + j * (C_w * WS) + offs_n[None, :] * WS + kk[:, None],
                            mask=k_ok[:, None] & col_ok[None, :], other=0.0)
                if UPCAST:
                    w = w.to(tl.float32)
                acc += tl.dot(gr.to(w.dtype), w, input_precision=PRECISION)
        acc = tl.where(row_ok[:, None], acc, 0.0)
    in_n = (offs_m < N)[:, None]
    tl.store(DX + g * N * C_X + offs_m[:, None] * C_X + offs_n[None, :], acc.to(DX.dtype.element_ty),
             mask=in_n & (offs_n < C_in)[None, :])
    if HAS_XB:
        ob = offs_n - C_in
        tl.store(DXB + g * N * C_B + offs_m[:, None] * C_B + ob[None, :], acc.to(DXB.dtype.element_ty),
                 mask=in_n & ((ob >= 0) & (ob < C_B))[None, :])
    # a group narrower than C_X: its columns of x past CI_g get zero
    tl.store(DX + g * N * C_X + offs_m[:, None] * C_X + offs_n[None, :], tl.zeros_like(acc).to(DX.dtype.element_ty),
             mask=in_n & ((offs_n >= C_in) & (offs_n < C_X))[None, :])


@triton.jit
def _x_rows(X, XB, g, offs_r, t, pos, ln, row_ok, offs_i, i_ok, C_in, C_B, stride_xg, stride_xn, stride_bg,
            stride_bn, HAS_XB: tl.constexpr, UPCAST: tl.constexpr):
    """The (rows, input channels of [x_g | xb_g]) tile shifted by tap offset t: row r holds x[r + t]
    where that row is in r's dialogue, zero elsewhere."""
    src_ok = (row_ok & (pos + t >= 0) & (pos + t < ln))[:, None]
    x = tl.load(X + g * stride_xg + (offs_r + t)[:, None] * stride_xn + offs_i[None, :],
                mask=src_ok & i_ok[None, :], other=0.0)
    if HAS_XB:
        ib = offs_i - C_in
        x += tl.load(XB + g * stride_bg + (offs_r + t)[:, None] * stride_bn + ib[None, :],
                     mask=src_ok & ((ib >= 0) & (ib < C_B))[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tap(DW, acc, ow, offs_o, offs_i, o_ok, C_w, j, K: tl.constexpr):
    """Tap j's (output, input channel) tile into the Conv1d-layout weight gradient (if j < K)."""
    if j < K:
        tl.store(DW + ow + offs_o[:, None] * (C_w * K) + offs_i[None, :] * K + j, acc,
                 mask=o_ok[:, None] & (offs_i < C_w)[None, :])


@triton.jit(do_not_specialize=["N", "stride_xg", "stride_bg"])
def _row_conv_bwd_dw_kernel(
    X, XB, DY, PRE, DW, DB, POS, LEN,
    N, stride_xg, stride_xn, stride_bg, stride_bn, SU, CI0, CI1, CI2, XR0, XR1, XR2, CO0, CO1, CO2, C_B, C_Y,
    OW1, OW2, OB1, OB2,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_XB: tl.constexpr,
    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """DW flat fp32: group g's (CO_g, CI_g + C_B, K) block at element offset OW_g (OW_0 = 0); DB
    flat fp32: (CO_g,) at OB_g. One (BLOCK_N output channels, BLOCK_K input channels) tile of up to
    three consecutive taps of one group, summed over every row in BLOCK_M chunks: each chunk's
    g = dy * act'(pre) is loaded and computed once and serves every tap of the program (the taps
    read the same input rows shifted). Group strides in SU units, as forward."""
    stride_xg = stride_xg * SU
    stride_bg = stride_bg * SU
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    n_tg = (K + 2) // 3  # programs per group along the taps, three taps each
    g = tl.program_id(2) // n_tg
    j0 = (tl.program_id(2) % n_tg) * 3
    C_in = _pick(g, CI0, CI1, CI2, G)
    C_out = _pick(g, CO0, CO1, CO2, G)
    ow = tl.where(g == 1, OW1, tl.where(g == 2, OW2, 0))
    ob = tl.where(g == 1, OB1, tl.where(g == 2, OB2, 0))
    C_w = C_in + C_B
    if (pid_o * BLOCK_N < C_out) & (pid_i * BLOCK_K < C_w):
        offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_i = pid_i * BLOCK_K + tl.arange(0, BLOCK_K)
        o_ok = offs_o < C_out
        # x's columns read up to XR_g (whole 16-byte runs); the sums of the columns past C_in are never
        # stored (and with a second input XR_g = C_in: its columns continue there)
        i_ok = offs_i < _pick(g, XR0, XR1, XR2, G)
        acc0 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        db = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for r0 in range(0, N, BLOCK_M):
            offs_r = r0 + tl.arange(0, BLOCK_M)
            pos, ln, row_ok = _rows(POS, LEN, offs_r, N)
            # dy's columns read up to its (padded) width: a row of whole 16-byte runs; the sums of
            # the output channels past C_out are never stored
            gr = _load_grad(DY, PRE, g, N, C_Y, offs_r, offs_o, row_ok[:, None] & (offs_o < C_Y)[None, :], ACT)
            if HAS_BIAS:
                db += tl.sum(gr, 0)
            x = _x_rows(X, XB, g, offs_r, j0 - PAD, pos, ln, row_ok, offs_i, i_ok, C_in, C_B, stride_xg, stride_xn,
                        stride_bg, stride_bn, HAS_XB, UPCAST)
            grt = tl.trans(gr.to(x.dtype))
            acc0 += tl.dot(grt, x, input_precision=PRECISION)
            if K > 1:
                x = _x_rows(X, XB, g, offs_r, j0 + 1 - PAD, pos, ln, row_ok, offs_i, i_ok, C_in, C_B, stride_xg,
                            stride_xn, stride_bg, stride_bn, HAS_XB, UPCAST)
                acc1 += tl.dot(grt, x, input_precision=PRECISION)
            if K > 2:
                x = _x_rows(X, XB, g, offs_r, j0 + 2 - PAD, pos, ln, row_ok, offs_i, i_ok, C_in, C_B, stride_xg,
                            stride_xn, stride_bg, stride_bn, HAS_XB, UPCAST)
                acc2 += tl.dot(grt, x, input_precision=PRECISION)
        _store_tap(DW, acc0, ow, offs_o, offs_i, o_ok, C_w, j0, K)
        if K > 1:
            _store_tap(DW, acc1, ow, offs_o, offs_i, o_ok, C_w, j0 + 1, K)
        if K > 2:
            _store_tap(DW, acc2, ow, offs_o, offs_i, o_ok, C_w, j0 + 2, K)
        if HAS_BIAS:
            if (pid_i == 0) & (j0 == 0):
                tl.store(DB + ob + offs_o, db, mask=o_ok)


def _groups(x, xb, weights, pos, lens):
    """Per-group (input, output) widths, checked: x (G, N, C_X) and xb (G, N, C_B) with unit channel
    strides, weights G contiguous tap-major (K, CI_g + C_B, CO_g) of one K, each row either dense or
    padded with zeros (``ops.row_conv.tap_major``), pos/lens (N,) int32."""
    G, N, C_X = x.shape
    C_B = xb.shape[-1] if xb is not None else 0
    if not 1 <= G <= 3 or len(weights) != G:
        raise ValueError(f"row conv: 1 to 3 groups, one weight each; got x {tuple(x.shape)} and {len(weights)} weights")
    if x.stride(-1) != 1 or (xb is not None and (xb.stride(-1) != 1 or tuple(xb.shape[:2]) != (G, N))):
        raise ValueError("x and xb: (G, N, C) with a contiguous channel dim, the same G and N")
    K = weights[0].shape[0]
    c_in, c_out = [], []
    for w in weights:
        dense = w.dim() == 3 and w.stride(2) == 1 and w.stride(1) >= w.shape[2] \
            and w.stride(0) == w.shape[1] * w.stride(1)
        if not dense or w.shape[0] != K or not 0 < w.shape[1] - C_B <= C_X:
            raise ValueError(f"weight: expected tap-major ({K}, C_in + {C_B}, C_out), rows of C_out channels "
                             f"(possibly padded), with C_in <= {C_X}; got {tuple(w.shape)} strides {w.stride()}")
        c_in.append(w.shape[1] - C_B)
        c_out.append(w.shape[2])
    if pos.shape != (N,) or lens.shape != (N,) or pos.dtype != torch.int32 or lens.dtype != torch.int32:
        raise ValueError(f"pos and lens: expected ({N},) int32 tensors")
    return G, N, C_X, C_B, K, c_in, c_out


def padded_width(widths) -> int:
    """The outputs' width: the widest group's, rounded up to a multiple of 16 (rows of whole
    16-byte runs; the columns past each group's own width are zero)."""
    return -(-max(widths) // 16) * 16


def _read_widths(x, xb, c_in):
    """How far each group's rows of x are read: CI_g rounded up to a multiple of 16 where x's rows
    are that wide (whole 16-byte runs: the channels read past CI_g meet zero weights in the forward
    and go to sums never stored in the weight gradient), CI_g itself where a second input continues
    the channels there."""
    if xb is not None:
        return list(c_in)
    return [min(-(-c // 16) * 16, x.shape[-1]) for c in c_in]


def _strides(x, xb):
    """(stride_xg, stride_xn, stride_bg, stride_bn, SU): the group strides, which change with the
    batch, in units of SU elements (``stride_units``); the row strides as they are."""
    unit, (xg, bg) = stride_units(x.stride(0), xb.stride(0) if xb is not None else 0)
    return xg, x.stride(1), bg, xb.stride(1) if xb is not None else 0, unit


def _three(vals):
    """A per-group argument list padded to the kernels' three slots."""
    vals = list(vals)
    return vals + [vals[0]] * (3 - len(vals))


@triton.jit
def _tap_major_kernel(W0, W1, W2, T0, T1, T2, CI0, CI1, CI2, CO0, CO1, CO2, WS0, WS1, WS2,
                      K: tl.constexpr, G: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr):
    """T_g[j, i, o] = W_g[o, i, j] in T's dtype for o < CO_g, 0 for CO_g <= o < WS_g: Conv1d weights
    (CO_g, CI_g, K) contiguous to tap-major rows padded with zeros. One (BLOCK_I, BLOCK_O) tile of
    tap program_id(2) % K of group program_id(2) // K."""
    g = tl.program_id(2) // K
    j = tl.program_id(2) % K
    W = _pick(g, W0, W1, W2, G)
    T = _pick(g, T0, T1, T2, G)
    C_in = _pick(g, CI0, CI1, CI2, G)
    C_out = _pick(g, CO0, CO1, CO2, G)
    WS = _pick(g, WS0, WS1, WS2, G)
    offs_i = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)
    i_ok = (offs_i < C_in)[:, None]
    w = tl.load(W + offs_o[None, :] * (C_in * K) + offs_i[:, None] * K + j, mask=i_ok & (offs_o < C_out)[None, :],
                other=0.0)
    tl.store(T + j * (C_in * WS) + offs_i[:, None] * WS + offs_o[None, :], w.to(T.dtype.element_ty),
             mask=i_ok & (offs_o < WS)[None, :])


def tap_major(weights, dtype):
    """Conv1d weights (CO_g, CI_g, K), contiguous, one K -> G tensors (K, CI_g, CO_g rounded up to a
    multiple of 16) in ``dtype``, zero past CO_g (the layout the kernels read, as ``[..., :CO_g]``
    views), made by one launch for all the groups (the cast autocast would make anyway, permuted)."""
    G, K = len(weights), weights[0].shape[2]
    bufs = [torch.empty((K, w.shape[1], -(-w.shape[0] // 16) * 16), device=w.device, dtype=dtype)
            for w in weights]
    tile = row_conv_tile("taps", dtype)
    block_i, block_o = tile.block_m, tile.block_n
    grid = (triton.cdiv(max(w.shape[1] for w in weights), block_i),
            triton.cdiv(max(b.shape[2] for b in bufs), block_o), G * K)
    launch(_tap_major_kernel, grid, *_three(weights), *_three(bufs), *_three([w.shape[1] for w in weights]),
           *_three([w.shape[0] for w in weights]), *_three([b.shape[2] for b in bufs]), K=K, G=G,
           BLOCK_I=block_i, BLOCK_O=block_o, num_warps=tile.num_warps, num_stages=tile.num_stages)
    return bufs


def row_conv_fwd(x, xb, weights, biases, pos, lens, pad, act, save_pre, ref=None):
    """x (G, N, C_X), xb (G, N, C_B) or None, weights G tap-major (K, CI_g + C_B, CO_g), biases G (CO_g,) or
    None, pos/lens (N,) int32 -> (y (G, N, max CO_g) in x's dtype, pre or None, part or None).
    ``ref`` (G, N, C_R): also the reconstruction loss's partial sums ``part`` fp32 (see the module)."""
    G, N, C_X, C_B, K, c_in, c_out = _groups(x, xb, weights, pos, lens)
    C_Y = padded_width(c_out)
    tile = row_conv_tile("fwd", x.dtype)
    y = torch.empty((G, N, C_Y), device=x.device, dtype=x.dtype)
    pre = torch.empty_like(y) if (save_pre and act) else None
    n_m, n_n = triton.cdiv(N, tile.block_m), triton.cdiv(C_Y, tile.block_n)
    part = torch.empty((G, n_m, n_n), device=x.device, dtype=torch.float32) if ref is not None else None
    bs = _three(biases if biases is not None else weights)
    args = (x, xb if xb is not None else x, *_three(weights), *bs, y, pre if pre is not None else y,
            ref if ref is not None else x, part if part is not None else y, pos, lens,
            N, *_strides(x, xb), *_three(c_in), *_three(_read_widths(x, xb, c_in)), *_three(c_out),
            *_three([w.stride(1) for w in weights]), C_B, C_Y,
            ref.shape[-1] if ref is not None else 0, n_m, n_n)
    const = dict(K=K, PAD=int(pad), ACT=int(act), HAS_BIAS=biases is not None, HAS_XB=xb is not None,
                 SAVE_PRE=pre is not None, REC=ref is not None, G=G, UPCAST=upcast(x.dtype),
                 PRECISION=dot_precision(x.dtype))
    if ref is not None:  # the partial sums' layout is the tile's: the table's tile, never tuned
        launch(_row_conv_fwd_kernel, (n_m, n_n, G), *args, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n,
               BLOCK_K=tile.block_k, num_warps=tile.num_warps, num_stages=tile.num_stages, **const)
    else:
        launch_tile("row_conv_fwd", _row_conv_fwd_kernel,
                    lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(C_Y, m["BLOCK_N"]), G), tile,
                    (ANY, ANY, dtype_name(x.dtype)), *args, **const, key_values=(max(c_in) + C_B, C_Y, K))
    return y, pre, part


def row_conv_bwd(dy, x, xb, weights, pre, pos, lens, pad, act, has_bias, need_dx):
    """Gradients of row_conv_fwd: (dx (G, N, C_X) in x's dtype or None, dxb (G, N, C_B) or None,
    dW fp32 flat (group g's (CO_g, CI_g + C_B, K) block after the previous groups'), db fp32 flat
    or None). dy (G, N, max CO_g) contiguous; pre as the forward saved it (act only)."""
    G, N, C_X, C_B, K, c_in, c_out = _groups(x, xb, weights, pos, lens)
    C_Y = padded_width(c_out)
    if dy.shape != (G, N, C_Y) or not dy.is_contiguous():
        raise ValueError(f"dy: expected contiguous ({G}, {N}, {C_Y}), got {tuple(dy.shape)}")
    pre_arg = pre if pre is not None else dy
    common = dict(K=K, PAD=int(pad), ACT=int(act), HAS_XB=xb is not None, G=G, UPCAST=upcast(x.dtype),
                  PRECISION=dot_precision(x.dtype))
    dx = dxb = None
    if need_dx:
        tile = row_conv_tile("bwd_dx", x.dtype)
        dx = torch.empty((G, N, C_X), device=x.device, dtype=x.dtype)
        dxb = torch.empty((G, N, C_B), device=x.device, dtype=x.dtype) if xb is not None else None
        width = max(C_X, max(c_in) + C_B)
        launch_tile("row_conv_bwd_dx", _row_conv_bwd_dx_kernel,
                    lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(width, m["BLOCK_N"]), G), tile,
                    (ANY, ANY, dtype_name(x.dtype)),
                    dy, pre_arg, *_three(weights), dx, dxb if dxb is not None else dx, pos, lens,
                    N, *_three(c_in), *_three(c_out), *_three([w.stride(1) for w in weights]), C_B, C_Y, C_X,
                    **common,
                    key_values=(max(c_in) + C_B, C_Y, K))
    sizes = [co * (ci + C_B) * K for ci, co in zip(c_in, c_out)]
    ow = [sum(sizes[:g]) for g in range(G)]
    ob = [sum(c_out[:g]) for g in range(G)]
    tile = row_conv_tile("bwd_dw", x.dtype)
    dw = torch.empty((sum(sizes),), device=x.device, dtype=torch.float32)
    db = torch.empty((sum(c_out),), device=x.device, dtype=torch.float32) if has_bias else None
    launch_tile("row_conv_bwd_dw", _row_conv_bwd_dw_kernel,
                lambda m: (triton.cdiv(C_Y, m["BLOCK_N"]), triton.cdiv(max(c_in) + C_B, m["BLOCK_K"]),
                           triton.cdiv(K, 3) * G), tile,
                (ANY, ANY, dtype_name(x.dtype)),
                x, xb if xb is not None else x, dy, pre_arg, dw, db if db is not None else dw, pos, lens,
                N, *_strides(x, xb), *_three(c_in), *_three(_read_widths(x, xb, c_in)), *_three(c_out), C_B, C_Y,
                *_three(ow)[1:], *_three(ob)[1:], HAS_BIAS=has_bias, **common,
                key_values=(max(c_in) + C_B, C_Y, K))
    return dx, dxb, dw, db
