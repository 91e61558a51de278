"""LayerNorm of C stacked inputs, each with its own affine parameters, in one launch each way
(Triton): the fused CMA layers normalise the three centrals' states (and the streams' inputs)
with the C modules' own norms.

    y[c, r] = (x[c, r] - mean[c, r]) * rstd[c, r] * w[c] + b[c],   rstd = 1 / sqrt(var + eps)

x (C, R, D) rows; mean and rstd (C, R) fp32 are kept for the backward. The backward is one
launch of two kinds of program: the first ``n_row_blocks`` per stack compute dx for a block of
rows,
    dx = rstd (w dy - mean_D(w dy) - x_hat mean_D(w dy x_hat)),
the rest dw = sum_r dy x_hat and db = sum_r dy for a block of columns, each summing every row in
a fixed order: deterministic, no atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch

MAX_D = 8192  # one row per tile: wider rows use torch's LayerNorm
BLOCK_C = 32  # columns per dw/db program
BLOCK_RR = 64  # rows per step of a dw/db program


def _blocks(D: int):
    block_d = max(16, triton.next_power_of_2(D))
    return block_d, max(1, min(64, 4096 // block_d))


def fwd_warps(block_d: int) -> int:
    """The forward's warps: 8 from width 1024 (with 4, the 4 x 1024 tile spills on sm_86)."""
    return 8 if block_d >= 1024 else 4


@triton.jit(do_not_specialize=["R"])
def _ln_fwd_kernel(X, W, B, Y, MEAN, RSTD, R, D, eps, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """X, Y (C, R, D) contiguous; W, B (C, D); MEAN, RSTD (C, R) fp32.
    This program normalises BLOCK_R whole rows of stack program_id(1)."""
    c = tl.program_id(1)
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    r_ok = offs_r < R
    d_ok = offs_d < D
    m2 = r_ok[:, None] & d_ok[None, :]
    idx = c * R * D + offs_r[:, None] * D + offs_d[None, :]
    x = tl.load(X + idx, mask=m2, other=0.0).to(tl.float32)
    mean = tl.sum(x, 1) / D
    xc = tl.where(m2, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, 1) / D + eps)
    w = tl.load(W + c * D + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    b = tl.load(B + c * D + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    y = xc * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(Y + idx, y.to(Y.dtype.element_ty), mask=m2)
    tl.store(MEAN + c * R + offs_r, mean, mask=r_ok)
    tl.store(RSTD + c * R + offs_r, rstd, mask=r_ok)


@triton.jit
def _xhat_tile(X, DY, MEAN, RSTD, c, offs_r, offs_d, R, D):
    """A (rows, columns) tile of x_hat and dy in fp32 (zero outside), and its mask."""
    r_ok = offs_r < R
    m2 = r_ok[:, None] & (offs_d < D)[None, :]
    idx = c * R * D + offs_r[:, None] * D + offs_d[None, :]
    x = tl.load(X + idx, mask=m2, other=0.0).to(tl.float32)
    dy = tl.load(DY + idx, mask=m2, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + c * R + offs_r, mask=r_ok, other=0.0)
    rstd = tl.load(RSTD + c * R + offs_r, mask=r_ok, other=0.0)
    return tl.where(m2, (x - mean[:, None]) * rstd[:, None], 0.0), dy, m2, idx, rstd


@triton.jit
def _ln_bwd_rows(DY, X, W, MEAN, RSTD, DX, c, p, R, D, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    """dx for rows [p BLOCK_R, (p + 1) BLOCK_R) of stack c."""
    offs_d = tl.arange(0, BLOCK_D)
    xhat, dy, m2, idx, rstd = _xhat_tile(X, DY, MEAN, RSTD, c, p * BLOCK_R + tl.arange(0, BLOCK_R), offs_d, R, D)
    w = tl.load(W + c * D + offs_d, mask=offs_d < D, other=0.0).to(tl.float32)
    wdy = tl.where(m2, w[None, :] * dy, 0.0)
    c1 = tl.sum(xhat * wdy, 1) / D
    c2 = tl.sum(wdy, 1) / D
    dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
    tl.store(DX + idx, dx.to(DX.dtype.element_ty), mask=m2)


@triton.jit
def _ln_bwd_cols(DY, X, MEAN, RSTD, DW, DB, c, q, R, D, BLOCK_C: tl.constexpr, BLOCK_RR: tl.constexpr):
    """dw and db for columns [q BLOCK_C, (q + 1) BLOCK_C) of stack c, every row in order."""
    offs_d = q * BLOCK_C + tl.arange(0, BLOCK_C)
    acc_w = tl.zeros([BLOCK_C], tl.float32)
    acc_b = tl.zeros([BLOCK_C], tl.float32)
    for r0 in range(0, R, BLOCK_RR):
        xhat, dy, m2, idx, rstd = _xhat_tile(X, DY, MEAN, RSTD, c, r0 + tl.arange(0, BLOCK_RR), offs_d, R, D)
        acc_w += tl.sum(dy * xhat, 0)
        acc_b += tl.sum(dy, 0)
    tl.store(DW + c * D + offs_d, acc_w, mask=offs_d < D)
    tl.store(DB + c * D + offs_d, acc_b, mask=offs_d < D)


@triton.jit(do_not_specialize=["R", "n_row_blocks"])
def _ln_bwd_kernel(DY, X, W, MEAN, RSTD, DX, DW, DB, R, D, n_row_blocks,
                   BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_RR: tl.constexpr):
    """DY, X, DX (C, R, D) contiguous; W (C, D); MEAN, RSTD (C, R) fp32; DW, DB (C, D) fp32.
    This program computes dx for BLOCK_R rows, or (past the row blocks) dw and db for BLOCK_C
    columns, of stack program_id(1)."""
    c = tl.program_id(1)
    p = tl.program_id(0)
    if p < n_row_blocks:
        _ln_bwd_rows(DY, X, W, MEAN, RSTD, DX, c, p, R, D, BLOCK_R, BLOCK_D)
    else:
        _ln_bwd_cols(DY, X, MEAN, RSTD, DW, DB, c, p - n_row_blocks, R, D, BLOCK_C, BLOCK_RR)


def layer_norm_fwd(x, w, b, eps, out_dtype):
    """x (C, R, D), w, b (C, D) contiguous -> (y (C, R, D) in ``out_dtype``, mean, rstd (C, R) fp32)."""
    C, R, D = x.shape
    block_d, block_r = _blocks(D)
    y = torch.empty((C, R, D), device=x.device, dtype=out_dtype)
    mean = torch.empty((C, R), device=x.device, dtype=torch.float32)
    rstd = torch.empty_like(mean)
    launch(_ln_fwd_kernel, (triton.cdiv(max(R, 1), block_r), C), x, w, b, y, mean, rstd, R, D, float(eps),
           BLOCK_R=block_r, BLOCK_D=block_d, num_warps=fwd_warps(block_d))
    return y, mean, rstd


def layer_norm_bwd(dy, x, w, mean, rstd):
    """(dx in x's dtype, dw (C, D) fp32, db (C, D) fp32) of layer_norm_fwd; all contiguous."""
    C, R, D = x.shape
    block_d, block_r = _blocks(D)
    n_rows = triton.cdiv(max(R, 1), block_r)
    dx = torch.empty_like(x)
    dw = torch.empty((C, D), device=x.device, dtype=torch.float32)
    db = torch.empty_like(dw)
    launch(_ln_bwd_kernel, (n_rows + triton.cdiv(D, BLOCK_C), C), dy, x, w, mean, rstd, dx, dw, db, R, D, n_rows,
           BLOCK_R=block_r, BLOCK_D=block_d, BLOCK_C=BLOCK_C, BLOCK_RR=BLOCK_RR, num_warps=4)
    return dx, dw, db
