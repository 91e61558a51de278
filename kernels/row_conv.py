"""Convolution over the utterance axis on the row-major layout (Triton): the U-Net's k-tap Conv1d
without the channel-first transposes around it, with bias, activation and the padding mask fused.

Rows are utterances: x (N, C_in) with one row per utterance, in any order of dialogues (the padded
B x L layout flattened, or packed rows). Row r belongs to a dialogue of length LEN[r] at position
POS[r] in it; a row with POS[r] >= LEN[r] is padding. For a valid row r and tap j (t = j - PAD),

    pre[r] = b + sum_j x[r + t] W[:, :, j]^T     over the taps whose neighbour 0 <= POS[r] + t < LEN[r]
    y[r]   = act(pre[r]),   y = 0 on padding rows

which is ``Conv1d(C_in, C_out, K, padding=PAD)`` over each dialogue zero-padded at both ends: a
shifted row never crosses into the next dialogue, and padding rows are never read (their gradient
is zero). W is the Conv1d weight (C_out, C_in, K) itself, read through its strides: same
parameters, same state_dict.

Kernels (each an implicit GEMM: the taps are K shifted loads of the same rows, no im2col buffer):
    fwd     y (and pre, saved for backward when act is GELU) — tiles of (rows, C_out)
    bwd_dx  dx[r] = sum_j g[r - t] W[:, :, j], g = dy * act'(pre) on valid rows — tiles of (rows, C_in)
    bwd_dw  dW[:, :, j] = sum_r g[r]^T x[r + t] and db = sum_r g[r] — one program per (C_out tile,
            C_in tile, tap) looping over all rows in a fixed order: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import dot_precision, upcast
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


# N and the row strides change from call to call: not specialised (no new variant per batch).
@triton.jit(do_not_specialize=["N", "stride_xn"])
def _row_conv_fwd_kernel(
    X, W, BIAS, Y, PRE, POS, LEN,
    N, C_in, C_out, stride_xn, stride_wo, stride_wi, stride_wk,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_PRE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """X (N, C_in) rows with unit channel stride; W (C_out, C_in, K) any strides; BIAS (C_out,);
    Y, PRE (N, C_out) contiguous; POS, LEN (N,) int32. One (BLOCK_M rows, BLOCK_N channels) tile."""
    offs_m, offs_n, offs_k, pos, ln, row_ok, col_ok = _output_tile(POS, LEN, N, C_out, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j in tl.static_range(K):
        src_ok = row_ok & (pos + (j - PAD) >= 0) & (pos + (j - PAD) < ln)
        src = offs_m + (j - PAD)
        for c0 in range(0, C_in, BLOCK_K):
            kk = c0 + offs_k
            k_ok = kk < C_in
            x = tl.load(X + src[:, None] * stride_xn + kk[None, :], mask=src_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(W + offs_n[None, :] * stride_wo + kk[:, None] * stride_wi + j * stride_wk,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                w = w.to(tl.float32)
            acc += tl.dot(x, w, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = offs_m[:, None] * C_out + offs_n[None, :]
    out_mask = (offs_m < N)[:, None] & col_ok[None, :]
    if SAVE_PRE:
        tl.store(PRE + out, acc.to(PRE.dtype.element_ty), mask=out_mask)
    y = tl.where(row_ok[:, None], _act(acc, ACT), 0.0)
    tl.store(Y + out, y.to(Y.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["N", "stride_dyn"])
def _row_conv_bwd_dx_kernel(
    DY, PRE, W, DX, POS, LEN,
    N, C_in, C_out, stride_dyn, stride_wo, stride_wi, stride_wk,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """DY (N, C_out) rows with unit channel stride; PRE (N, C_out) contiguous (ACT only); DX (N, C_in)
    contiguous. One (BLOCK_M rows, BLOCK_N input channels) tile, reducing over C_out and the taps."""
    offs_m, offs_n, offs_k, pos, ln, row_ok, col_ok = _output_tile(POS, LEN, N, C_in, BLOCK_M, BLOCK_N, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for j in tl.static_range(K):
        # row r receives from the output row r - t through tap j when that row is in its dialogue
        dst_ok = row_ok & (pos - (j - PAD) >= 0) & (pos - (j - PAD) < ln)
        dst = offs_m - (j - PAD)
        for c0 in range(0, C_out, BLOCK_K):
            kk = c0 + offs_k
            k_ok = kk < C_out
            m2 = dst_ok[:, None] & k_ok[None, :]
            g = tl.load(DY + dst[:, None] * stride_dyn + kk[None, :], mask=m2, other=0.0).to(tl.float32)
            if ACT != 0:
                pre = tl.load(PRE + dst[:, None] * C_out + kk[None, :], mask=m2, other=0.0).to(tl.float32)
                g = _grad_pre(g, pre, ACT)
            w = tl.load(W + kk[:, None] * stride_wo + offs_n[None, :] * stride_wi + j * stride_wk,
                        mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                w = w.to(tl.float32)
            acc += tl.dot(g.to(w.dtype), w, input_precision=PRECISION)
    acc = tl.where(row_ok[:, None], acc, 0.0)
    tl.store(DX + offs_m[:, None] * C_in + offs_n[None, :], acc.to(DX.dtype.element_ty),
             mask=(offs_m < N)[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["N", "stride_xn", "stride_dyn"])
def _row_conv_bwd_dw_kernel(
    X, DY, PRE, DW, DB, POS, LEN,
    N, C_in, C_out, stride_xn, stride_dyn,
    K: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """DW (C_out, C_in, K) fp32 contiguous; DB (C_out,) fp32. One (BLOCK_N output channels,
    BLOCK_K input channels) tile of one tap, summed over every row in BLOCK_M chunks."""
    pid_o = tl.program_id(0)
    pid_i = tl.program_id(1)
    j = tl.program_id(2)
    t = j - PAD
    offs_o = pid_o * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_i = pid_i * BLOCK_K + tl.arange(0, BLOCK_K)
    o_ok = offs_o < C_out
    i_ok = offs_i < C_in
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    db = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_M):
        offs_r = r0 + tl.arange(0, BLOCK_M)
        pos, ln, row_ok = _rows(POS, LEN, offs_r, N)
        m2 = row_ok[:, None] & o_ok[None, :]
        g = tl.load(DY + offs_r[:, None] * stride_dyn + offs_o[None, :], mask=m2, other=0.0).to(tl.float32)
        if ACT != 0:
            pre = tl.load(PRE + offs_r[:, None] * C_out + offs_o[None, :], mask=m2, other=0.0).to(tl.float32)
            g = _grad_pre(g, pre, ACT)
        if HAS_BIAS:
            db += tl.sum(g, 0)
        src_ok = row_ok & (pos + t >= 0) & (pos + t < ln)
        x = tl.load(X + (offs_r + t)[:, None] * stride_xn + offs_i[None, :],
                    mask=src_ok[:, None] & i_ok[None, :], other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        acc += tl.dot(tl.trans(g.to(x.dtype)), x, input_precision=PRECISION)
    tl.store(DW + offs_o[:, None] * (C_in * K) + offs_i[None, :] * K + j, acc,
             mask=o_ok[:, None] & i_ok[None, :])
    if HAS_BIAS:
        if (pid_i == 0) & (j == 0):
            tl.store(DB + offs_o, db, mask=o_ok)


def _check(x, weight, pos, lens):
    N, C_in = x.shape
    if weight.dim() != 3 or weight.shape[1] != C_in:
        raise ValueError(f"weight: expected (C_out, {C_in}, K), got {tuple(weight.shape)}")
    if x.stride(1) != 1:
        raise ValueError("x: the channel dim must be contiguous")
    if pos.shape != (N,) or lens.shape != (N,) or pos.dtype != torch.int32 or lens.dtype != torch.int32:
        raise ValueError(f"pos and lens: expected ({N},) int32 tensors")


def row_conv_fwd(x, weight, bias, pos, lens, pad, act, save_pre):
    """x (N, C_in), weight (C_out, C_in, K), bias (C_out,) or None, pos/lens (N,) int32 ->
    (y (N, C_out) in x's dtype, pre (N, C_out) or None)."""
    _check(x, weight, pos, lens)
    N, C_in = x.shape
    C_out, _, K = weight.shape
    tile = row_conv_tile("fwd", x.dtype)
    y = torch.empty((N, C_out), device=x.device, dtype=x.dtype)
    pre = torch.empty_like(y) if (save_pre and act) else None
    launch_tile("row_conv_fwd", _row_conv_fwd_kernel,
                lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(C_out, m["BLOCK_N"])), tile,
                (ANY, ANY, dtype_name(x.dtype)), x, weight, bias if bias is not None else weight, y, pre if pre is not None else y, pos, lens,
           N, C_in, C_out, x.stride(0), *weight.stride(),
           K=K, PAD=int(pad), ACT=int(act), HAS_BIAS=bias is not None, SAVE_PRE=pre is not None,
           UPCAST=upcast(x.dtype), PRECISION=dot_precision(x.dtype), key_values=(C_in, C_out, K))
    return y, pre


def row_conv_bwd(dy, x, weight, pre, pos, lens, pad, act, has_bias, need_dx):
    """Gradients of row_conv_fwd: (dx in x's dtype or None, dW fp32, db fp32 or None).
    dy (N, C_out) with a unit channel stride; pre as the forward saved it (act only)."""
    _check(x, weight, pos, lens)
    N, C_in = x.shape
    C_out, _, K = weight.shape
    if dy.shape != (N, C_out) or dy.stride(1) != 1:
        raise ValueError(f"dy: expected ({N}, {C_out}) with a contiguous channel dim")
    pre_arg = pre if pre is not None else dy
    common = dict(K=K, PAD=int(pad), ACT=int(act))
    dx = None
    if need_dx:
        tile = row_conv_tile("bwd_dx", x.dtype)
        dx = torch.empty((N, C_in), device=x.device, dtype=x.dtype)
        launch_tile("row_conv_bwd_dx", _row_conv_bwd_dx_kernel,
                    lambda m: (triton.cdiv(N, m["BLOCK_M"]), triton.cdiv(C_in, m["BLOCK_N"])), tile,
                    (ANY, ANY, dtype_name(x.dtype)),
                    dy, pre_arg, weight, dx, pos, lens, N, C_in, C_out, dy.stride(0), *weight.stride(), **common,
                    UPCAST=upcast(x.dtype), PRECISION=dot_precision(x.dtype), key_values=(C_in, C_out, K))
    tile = row_conv_tile("bwd_dw", x.dtype)
    dw = torch.empty((C_out, C_in, K), device=x.device, dtype=torch.float32)
    db = torch.empty((C_out,), device=x.device, dtype=torch.float32) if has_bias else None
    launch_tile("row_conv_bwd_dw", _row_conv_bwd_dw_kernel,
                lambda m: (triton.cdiv(C_out, m["BLOCK_N"]), triton.cdiv(C_in, m["BLOCK_K"]), K), tile,
                (ANY, ANY, dtype_name(x.dtype)),
                x, dy, pre_arg, dw, db if db is not None else dw, pos, lens, N, C_in, C_out, x.stride(0),
                dy.stride(0), **common, HAS_BIAS=has_bias, UPCAST=upcast(x.dtype),
                PRECISION=dot_precision(x.dtype), key_values=(C_in, C_out, K))
    return dx, dw, db
