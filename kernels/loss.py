"""The CMATH loss's per-utterance classification terms in one kernel each way (Triton).

Per row n (an utterance) with label y, coarse logits z (K classes) and the C fine heads' logits
f_c, temperature tau:
    ce_n   = logsumexp(z) - z_y
    fce_n  = sum_c logsumexp(f_c) - f_c,y
    kd_n   = sum_c KL(softmax(z / tau) || softmax(f_c / tau))
The forward writes the three (N,) fp32 rows; the caller weighs and sums them. The backward takes
their gradients and writes d z and d f in one pass:
    d z   = dce (softmax(z) - onehot_y) + [teacher_grad] sum_c dkd / tau p_t (a_c - kd_c)
    d f_c = dfce (softmax(f_c) - onehot_y) + dkd / tau (p_s,c - p_t)
with p_t = softmax(z / tau), p_s,c = softmax(f_c / tau), a_c = log p_t - log p_s,c.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NEG, launch

BLOCK_N = 64


@triton.jit
def _log_softmax(x, k_ok):
    """Row-wise log-softmax of a (rows, BLOCK_K) tile over its valid columns (others -> NEG)."""
    x = tl.where(k_ok[None, :], x, NEG)
    m = tl.max(x, 1)
    e = tl.where(k_ok[None, :], tl.exp(x - m[:, None]), 0.0)
    return x - (m + tl.log(tl.sum(e, 1)))[:, None]


@triton.jit
def _rows_tile(Z, Y, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's BLOCK_N rows: offsets, row and class masks, their product, the (row, class)
    offsets, the label one-hot mask and the coarse logits in fp32."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    k_ok = offs_k < K
    m2 = n_ok[:, None] & k_ok[None, :]
    idx = offs_n[:, None] * K + offs_k[None, :]
    y = tl.load(Y + offs_n, mask=n_ok, other=0)
    z = tl.load(Z + idx, mask=m2, other=0.0).to(tl.float32)
    return offs_n, n_ok, k_ok, m2, idx, offs_k[None, :] == y[:, None], z


@triton.jit(do_not_specialize=["N"])
def _cls_fwd_kernel(Z, F, Y, CE, FCE, KD, N, K, inv_tau,
                    C: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """Z (N, K), F (C, N, K) contiguous, any float dtype; Y (N,) int64 in [0, K); CE, FCE, KD (N,)."""
    offs_n, n_ok, k_ok, m2, idx, is_y, z = _rows_tile(Z, Y, N, K, BLOCK_N, BLOCK_K)
    ce = -tl.sum(tl.where(is_y, _log_softmax(z, k_ok), 0.0), 1)
    log_pt = _log_softmax(z * inv_tau, k_ok)
    p_t = tl.where(k_ok[None, :], tl.exp(log_pt), 0.0)
    fce = tl.zeros([BLOCK_N], tl.float32)
    kd = tl.zeros([BLOCK_N], tl.float32)
    for c in tl.static_range(C):
        f = tl.load(F + c * N * K + idx, mask=m2, other=0.0).to(tl.float32)
        fce -= tl.sum(tl.where(is_y, _log_softmax(f, k_ok), 0.0), 1)
        kd += tl.sum(tl.where(k_ok[None, :], p_t * (log_pt - _log_softmax(f * inv_tau, k_ok)), 0.0), 1)
    tl.store(CE + offs_n, ce, mask=n_ok)
    tl.store(FCE + offs_n, fce, mask=n_ok)
    tl.store(KD + offs_n, kd, mask=n_ok)


@triton.jit(do_not_specialize=["N"])
def _cls_bwd_kernel(Z, F, Y, DCE, DFCE, DKD, DZ, DF, N, K, inv_tau,
                    C: tl.constexpr, TEACHER_GRAD: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_K: tl.constexpr):
    """DCE, DFCE, DKD (N,) fp32 (zeros where a term has no gradient); DZ (N, K) and DF (C, N, K)
    contiguous in the inputs' dtypes."""
    offs_n, n_ok, k_ok, m2, idx, is_y, z = _rows_tile(Z, Y, N, K, BLOCK_N, BLOCK_K)
    onehot = tl.where(is_y, 1.0, 0.0)
    dce = tl.load(DCE + offs_n, mask=n_ok, other=0.0)
    dfce = tl.load(DFCE + offs_n, mask=n_ok, other=0.0)
    dkd = tl.load(DKD + offs_n, mask=n_ok, other=0.0) * inv_tau
    dz = dce[:, None] * (tl.exp(_log_softmax(z, k_ok)) - onehot)
    log_pt = _log_softmax(z * inv_tau, k_ok)
    p_t = tl.where(k_ok[None, :], tl.exp(log_pt), 0.0)
    for c in tl.static_range(C):
        f = tl.load(F + c * N * K + idx, mask=m2, other=0.0).to(tl.float32)
        log_ps = _log_softmax(f * inv_tau, k_ok)
        df = dfce[:, None] * (tl.exp(_log_softmax(f, k_ok)) - onehot) + dkd[:, None] * (tl.exp(log_ps) - p_t)
        tl.store(DF + c * N * K + idx, df.to(DF.dtype.element_ty), mask=m2)
        if TEACHER_GRAD:
            a = tl.where(k_ok[None, :], log_pt - log_ps, 0.0)
            kl = tl.sum(p_t * a, 1)
            dz += dkd[:, None] * p_t * (a - kl[:, None])
    tl.store(DZ + idx, dz.to(DZ.dtype.element_ty), mask=m2)


def _block_k(K: int) -> int:
    return max(2, triton.next_power_of_2(K))


def classification_rows_fwd(z, f, y, tau):
    """z (N, K), f (C, N, K) contiguous, y (N,) int64 -> (ce, fce, kd), each (N,) fp32."""
    N, K = z.shape
    C = f.shape[0]
    ce, fce, kd = (torch.empty(N, device=z.device, dtype=torch.float32) for _ in range(3))
    launch(_cls_fwd_kernel, (triton.cdiv(max(N, 1), BLOCK_N),), z, f, y, ce, fce, kd, N, K, 1.0 / float(tau),
           C=C, BLOCK_N=BLOCK_N, BLOCK_K=_block_k(K), num_warps=4)
    return ce, fce, kd


def classification_rows_bwd(z, f, y, dce, dfce, dkd, tau, teacher_grad):
    """Gradients (dz, df) of classification_rows_fwd; dce, dfce, dkd (N,) fp32 contiguous."""
    N, K = z.shape
    C = f.shape[0]
    dz, df = torch.empty_like(z), torch.empty_like(f)
    launch(_cls_bwd_kernel, (triton.cdiv(max(N, 1), BLOCK_N),), z, f, y, dce, dfce, dkd, dz, df, N, K,
           1.0 / float(tau), C=C, TEACHER_GRAD=bool(teacher_grad), BLOCK_N=BLOCK_N, BLOCK_K=_block_k(K),
           num_warps=4)
    return dz, df
