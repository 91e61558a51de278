"""The reconstruction U-Nets' elementwise ends for the three modalities at once (Triton).

    standardise   x_std[g, r] = (x_g[src[r]] - mean_g) / std_g on valid rows (zero on padding rows
                  and past the group's D_g features): the input standardisation and the gather of
                  the packed rows in one pass, written as one (G, N, C_X) tensor
    rec_total     rec = sum(part) / n, n the valid rows (at least 1), from the partial sums of
                  sum_d (x_hat - x_std)^2 / D_g that the last U-Net convolution's epilogue wrote
                  (``row_conv``'s REC); one program, a fixed order
    rec_bwd       d x_hat[g, r] = d rec * 2 (x_hat - x_std) / (n D_g) on valid rows, zero elsewhere

so that L_rec = sum_g ||M (X_g - X_hat_g)||_F^2 / (n D_g), the reference's sum of per-modality mean
squared errors over valid utterances.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import launch
from .row_conv import _pick, _rows, _three

BLOCK_M = 32
BLOCK_D = 64
BLOCK_R = 256


def padded_width(dims) -> int:
    """The standardised rows' width: the widest group's, rounded up to a multiple of 16."""
    return -(-max(dims) // 16) * 16


@triton.jit(do_not_specialize=["N"])
def _standardise_kernel(X0, X1, X2, M0, M1, M2, SD0, SD1, SD2, SRC, OUT, POS, LEN,
                        N, S0, S1, S2, D0, D1, D2, C_X,
                        HAS_SRC: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """X_g (rows, D_g) with row stride S_g and unit feature stride; M_g, SD_g (D_g,); SRC (N,) int64
    (the row of X_g each output row reads; the identity without it); OUT (G, N, C_X) contiguous.
    This program writes a (BLOCK_M rows, BLOCK_D features) tile of group program_id(2)."""
    g = tl.program_id(2)
    X = _pick(g, X0, X1, X2, G)
    MEAN = _pick(g, M0, M1, M2, G)
    STD = _pick(g, SD0, SD1, SD2, G)
    SX = _pick(g, S0, S1, S2, G)
    D = _pick(g, D0, D1, D2, G)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pos, ln, row_ok = _rows(POS, LEN, offs_m, N)
    src = offs_m.to(tl.int64)
    if HAS_SRC:
        src = tl.load(SRC + offs_m, mask=offs_m < N, other=0)
    d_ok = offs_d < D
    ok = row_ok[:, None] & d_ok[None, :]
    x = tl.load(X + src[:, None] * SX + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
    mean = tl.load(MEAN + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    std = tl.load(STD + offs_d, mask=d_ok, other=1.0).to(tl.float32)
    y = tl.where(ok, (x - mean[None, :]) / std[None, :], 0.0)
    tl.store(OUT + g * N * C_X + offs_m[:, None] * C_X + offs_d[None, :], y.to(OUT.dtype.element_ty),
             mask=(offs_m < N)[:, None] & (offs_d < C_X)[None, :])


@triton.jit(do_not_specialize=["P", "N"])
def _rec_total_kernel(PART, P, POS, LEN, N, REC, NV, BLOCK: tl.constexpr):
    """PART (P,) fp32 partial sums; REC, NV () fp32: the loss and the valid row count. One program
    (a fixed order: deterministic)."""
    acc = tl.zeros([BLOCK], tl.float32)
    for p0 in range(0, P, BLOCK):
        offs = p0 + tl.arange(0, BLOCK)
        acc += tl.load(PART + offs, mask=offs < P, other=0.0)
    cnt = tl.zeros([BLOCK], tl.float32)
    for r0 in range(0, N, BLOCK):
        pos, ln, ok = _rows(POS, LEN, r0 + tl.arange(0, BLOCK), N)
        cnt += tl.where(ok, 1.0, 0.0)
    n = tl.maximum(tl.sum(cnt, 0), 1.0)
    tl.store(REC, tl.sum(acc, 0) / n)
    tl.store(NV, n)


@triton.jit(do_not_specialize=["N"])
def _rec_bwd_kernel(XHAT, REF, GREC, NV, DXHAT, POS, LEN, N, D0, D1, D2, C_Y, C_R,
                    G: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """XHAT, DXHAT (G, N, C_Y), REF (G, N, C_R) contiguous; GREC, NV () fp32.
    This program writes a (BLOCK_M rows, BLOCK_D features) tile of group program_id(2)."""
    g = tl.program_id(2)
    D = _pick(g, D0, D1, D2, G)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    pos, ln, row_ok = _rows(POS, LEN, offs_m, N)
    ok = row_ok[:, None] & (offs_d < D)[None, :]
    coef = 2.0 * tl.load(GREC).to(tl.float32) / (tl.load(NV) * D)
    # each read up to its own (padded) width, whole 16-byte runs; the group's features picked after
    rows = row_ok[:, None]
    xh = tl.load(XHAT + g * N * C_Y + offs_m[:, None] * C_Y + offs_d[None, :], mask=rows & (offs_d < C_Y)[None, :],
                 other=0.0).to(tl.float32)
    ref = tl.load(REF + g * N * C_R + offs_m[:, None] * C_R + offs_d[None, :], mask=rows & (offs_d < C_R)[None, :],
                  other=0.0).to(tl.float32)
    d = tl.where(ok, (xh - ref) * coef, 0.0)
    tl.store(DXHAT + g * N * C_Y + offs_m[:, None] * C_Y + offs_d[None, :], d.to(DXHAT.dtype.element_ty),
             mask=(offs_m < N)[:, None] & (offs_d < C_Y)[None, :])


def standardise_fwd(xs, means, stds, src, pos, lens, out_dtype):
    """xs: G (rows, D_g) with a unit feature stride; means, stds: G (D_g,); src (N,) int64 or None
    (then N = rows); pos, lens (N,) int32 -> (G, N, C_X) in ``out_dtype``, C_X = max D_g rounded up
    to a multiple of 16 (``padded_width``: rows of whole 16-byte runs, which the first convolution
    then reads with vector loads), zero past each group's D_g."""
    G = len(xs)
    N = src.shape[0] if src is not None else xs[0].shape[0]
    dims = [x.shape[1] for x in xs]
    C_X = padded_width(dims)
    out = torch.empty((G, N, C_X), device=xs[0].device, dtype=out_dtype)
    launch(_standardise_kernel, (triton.cdiv(max(N, 1), BLOCK_M), triton.cdiv(C_X, BLOCK_D), G),
           *_three(xs), *_three(means), *_three(stds), src if src is not None else pos, out, pos, lens,
           N, *_three([x.stride(0) for x in xs]), *_three(dims), C_X,
           HAS_SRC=src is not None, G=G, BLOCK_M=BLOCK_M, BLOCK_D=BLOCK_D, num_warps=4)
    return out


def rec_total(part, pos, lens):
    """part (any shape) fp32 contiguous -> (rec () fp32, n () fp32)."""
    N = pos.shape[0]
    rec = torch.empty((), device=part.device, dtype=torch.float32)
    nv = torch.empty((), device=part.device, dtype=torch.float32)
    launch(_rec_total_kernel, (1,), part, part.numel(), pos, lens, N, rec, nv, BLOCK=BLOCK_R, num_warps=4)
    return rec, nv


def rec_bwd(x_hat, ref, grec, nv, pos, lens, dims):
    """d x_hat (G, N, C_Y) of rec_total's loss; x_hat (G, N, C_Y), ref (G, N, C_R) contiguous."""
    G, N, C_Y = x_hat.shape
    dx = torch.empty_like(x_hat)
    launch(_rec_bwd_kernel, (triton.cdiv(max(N, 1), BLOCK_M), triton.cdiv(C_Y, BLOCK_D), G),
           x_hat, ref, grec, nv, dx, pos, lens, N, *_three(dims), C_Y, ref.shape[-1], G=G, BLOCK_M=BLOCK_M,
           BLOCK_D=BLOCK_D, num_warps=4)
    return dx
