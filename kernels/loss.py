"""The whole CMATH loss in two kernels forward and one backward (Triton).

Per row n (an utterance; ``valid`` says whether it is one) with label y, coarse logits z (K
classes), the C fine heads' logits f_c, the fine features F_c and the (detached) coarse feature
H (d each), temperature tau:
    ce_n   = logsumexp(z) - z_y
    fce_n  = sum_c logsumexp(f_c) - f_c,y
    kd_n   = sum_c KL(softmax(z / tau) || softmax(f_c / tau))
    feat_n = sum_c 1 - cos(F_c, H)          cos with both norms clamped to >= 1e-8
and the class weight w_n = cw[y] (1 without class weights), zero on rows that are not valid.
``_loss_rows_kernel`` writes, per program, the partial sums [sum w ce, sum w fce, sum kd, sum feat,
sum kl, sum w, sum valid]; ``_loss_total_kernel`` (one program) adds them in a fixed order and
writes the terms
    ce = sum w ce / sum w, fine_ce = sum w fce / sum w, kd_logit = kd_scale sum kd / n,
    kd_feat = sum feat / n, kl = sum kl / n,   n = max(sum valid, 1)
and total = ce + g_fine fine_ce + g_kd kd_logit + g_feat kd_feat + l_rec rec + beta kl.
The backward (``_loss_bwd_kernel``) writes every input's gradient from d total in one pass:
    d z   = dce (softmax(z) - onehot_y) + [teacher_grad] sum_c dkd / tau p_t (a_c - kd_c)
    d f_c = dfce (softmax(f_c) - onehot_y) + dkd / tau (p_s,c - p_t)
    d F_c = -dfeat (H / (|F_c| |H|) - cos_c F_c / (|F_c| |F_c|))
    d kl_n = g beta valid_n / n,  d rec = g l_rec
with dce = g w / sum w, dfce = g_fine dce, dkd = g g_kd kd_scale valid / n, dfeat = g g_feat valid / n,
p_t = softmax(z / tau), p_s,c = softmax(f_c / tau), a_c = log p_t - log p_s,c.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import NEG, launch

BLOCK_N = 32
BLOCK_P = 64
NUM_WARPS = 8  # with 32 x 64 feature tiles: no spills on sm_90 (tests/kernels)
COS_EPS = tl.constexpr(1e-8)  # F.cosine_similarity's default
# the terms vector: what each slot holds
TERMS = ("ce", "fine_ce", "kd_logit", "kd_feat", "rec", "kl", "beta", "total", "w_sum", "n")
N_PART = 8
N_PART_C = tl.constexpr(N_PART)


@triton.jit
def _log_softmax(x, k_ok):
    """Row-wise log-softmax of a (rows, BLOCK_K) tile over its valid columns (others -> NEG)."""
    x = tl.where(k_ok[None, :], x, NEG)
    m = tl.max(x, 1)
    e = tl.where(k_ok[None, :], tl.exp(x - m[:, None]), 0.0)
    return x - (m + tl.log(tl.sum(e, 1)))[:, None]


@triton.jit
def _loss_tile(Z, Y, VALID, CW, N, K, HAS_CW: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's BLOCK_N rows: offsets, row and class masks, their product, the (row, class)
    offsets, the label one-hot mask, the coarse logits in fp32, the valid rows (fp32 0/1) and the
    class weights (zero on rows that are not valid). Labels of rows that are not valid are read
    as class 0."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    n_ok = offs_n < N
    k_ok = offs_k < K
    m2 = n_ok[:, None] & k_ok[None, :]
    idx = offs_n[:, None] * K + offs_k[None, :]
    valid = tl.load(VALID + offs_n, mask=n_ok, other=0) != 0
    y = tl.where(valid, tl.load(Y + offs_n, mask=n_ok, other=0), 0)
    z = tl.load(Z + idx, mask=m2, other=0.0).to(tl.float32)
    m = tl.where(valid, 1.0, 0.0)
    w = m
    if HAS_CW:
        w = tl.where(valid, tl.load(CW + y, mask=n_ok, other=0.0).to(tl.float32), 0.0)
    return offs_n, n_ok, k_ok, m2, idx, offs_k[None, :] == y[:, None], z, m, w


@triton.jit
def _feature_tile(FINE, COARSE, c, offs_n, n_ok, d0, N, D, BLOCK_D: tl.constexpr):
    """Columns [d0, d0 + BLOCK_D) of F_c and H for the program's rows, in fp32 (zero outside), with
    the offsets of F_c's tile and its mask."""
    offs_d = d0 + tl.arange(0, BLOCK_D)
    mk = n_ok[:, None] & (offs_d < D)[None, :]
    row = offs_n[:, None] * D + offs_d[None, :]
    x = tl.load(FINE + c * N * D + row, mask=mk, other=0.0).to(tl.float32)
    h = tl.load(COARSE + row, mask=mk, other=0.0).to(tl.float32)
    return x, h, c * N * D + row, mk


@triton.jit
def _cos_stats(FINE, COARSE, c, offs_n, n_ok, N, D, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per row: F_c . H, |F_c| and |H| in fp32."""
    dot = tl.zeros([BLOCK_N], tl.float32)
    nx = tl.zeros([BLOCK_N], tl.float32)
    ny = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        x, h, _, _ = _feature_tile(FINE, COARSE, c, offs_n, n_ok, d0, N, D, BLOCK_D)
        dot += tl.sum(x * h, 1)
        nx += tl.sum(x * x, 1)
        ny += tl.sum(h * h, 1)
    return dot, tl.sqrt(nx), tl.sqrt(ny)


@triton.jit(do_not_specialize=["N"])
def _loss_rows_kernel(Z, F, Y, VALID, CW, FINE, COARSE, KL, PART, N, K, D, inv_tau,
                      C: tl.constexpr, HAS_CW: tl.constexpr, HAS_KL: tl.constexpr, FEAT: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """Z (N, K), F (C, N, K), FINE (C, N, D), COARSE (N, D) contiguous, any float dtype; Y (N,)
    int64; VALID (N,) uint8; CW (K,) fp32; KL (N,) fp32; PART (programs, 8) fp32.
    This program computes BLOCK_N rows' terms and writes their sums as its row of PART."""
    offs_n, n_ok, k_ok, m2, idx, is_y, z, m, w = _loss_tile(Z, Y, VALID, CW, N, K, HAS_CW, BLOCK_N, BLOCK_K)
    ce = -tl.sum(tl.where(is_y, _log_softmax(z, k_ok), 0.0), 1)
    log_pt = _log_softmax(z * inv_tau, k_ok)
    p_t = tl.where(k_ok[None, :], tl.exp(log_pt), 0.0)
    fce = tl.zeros([BLOCK_N], tl.float32)
    kd = tl.zeros([BLOCK_N], tl.float32)
    feat = tl.zeros([BLOCK_N], tl.float32)
    for c in tl.static_range(C):
        f = tl.load(F + c * N * K + idx, mask=m2, other=0.0).to(tl.float32)
        fce -= tl.sum(tl.where(is_y, _log_softmax(f, k_ok), 0.0), 1)
        kd += tl.sum(tl.where(k_ok[None, :], p_t * (log_pt - _log_softmax(f * inv_tau, k_ok)), 0.0), 1)
        if FEAT:
            dot, nx, ny = _cos_stats(FINE, COARSE, c, offs_n, n_ok, N, D, BLOCK_N, BLOCK_D)
            feat += 1.0 - dot / (tl.maximum(nx, COS_EPS) * tl.maximum(ny, COS_EPS))
    kl = tl.zeros([BLOCK_N], tl.float32)
    if HAS_KL:
        kl = tl.load(KL + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    ok = m > 0  # sums over valid rows only (whatever a padded row holds)
    cols = tl.arange(0, N_PART_C)
    s = tl.where(cols == 0, tl.sum(tl.where(ok, w * ce, 0.0), 0), 0.0)
    s += tl.where(cols == 1, tl.sum(tl.where(ok, w * fce, 0.0), 0), 0.0)
    s += tl.where(cols == 2, tl.sum(tl.where(ok, kd, 0.0), 0), 0.0)
    s += tl.where(cols == 3, tl.sum(tl.where(ok, feat, 0.0), 0), 0.0)
    s += tl.where(cols == 4, tl.sum(tl.where(ok, kl, 0.0), 0), 0.0)
    s += tl.where(cols == 5, tl.sum(w, 0), 0.0)
    s += tl.where(cols == 6, tl.sum(m, 0), 0.0)
    tl.store(PART + tl.program_id(0) * N_PART_C + cols, s)


@triton.jit
def _pick(s, cols, i: tl.constexpr):
    return tl.sum(tl.where(cols == i, s, 0.0), 0)


@triton.jit(do_not_specialize=["P"])
def _loss_total_kernel(PART, P, REC, BETA, TOTAL, TERMS, beta_value, kd_scale, g_fine, g_kd, g_feat, l_rec,
                       HAS_REC: tl.constexpr, HAS_BETA: tl.constexpr, BLOCK_P: tl.constexpr):
    """One program: PART (P, 8) fp32 partial sums -> TOTAL () and TERMS (10,) fp32 (``TERMS`` names
    the slots); REC () and BETA () fp32 when given, else rec 0 and beta ``beta_value``."""
    cols = tl.arange(0, N_PART_C)
    acc = tl.zeros([BLOCK_P, N_PART_C], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        offs = p0 + tl.arange(0, BLOCK_P)
        acc += tl.load(PART + offs[:, None] * N_PART_C + cols[None, :], mask=(offs < P)[:, None], other=0.0)
    s = tl.sum(acc, 0)
    w_sum = tl.maximum(_pick(s, cols, 5), 1e-12)
    n = tl.maximum(_pick(s, cols, 6), 1.0)
    ce = _pick(s, cols, 0) / w_sum
    fce = _pick(s, cols, 1) / w_sum
    kd = _pick(s, cols, 2) / n * kd_scale
    feat = _pick(s, cols, 3) / n
    kl = _pick(s, cols, 4) / n
    rec = 0.0
    if HAS_REC:
        rec = tl.load(REC).to(tl.float32)
    beta = beta_value
    if HAS_BETA:
        beta = tl.load(BETA).to(tl.float32)
    total = ce + g_fine * fce + g_kd * kd + g_feat * feat + l_rec * rec + beta * kl
    tl.store(TOTAL, total)
    tl.store(TERMS + 0, ce)
    tl.store(TERMS + 1, fce)
    tl.store(TERMS + 2, kd)
    tl.store(TERMS + 3, feat)
    tl.store(TERMS + 4, rec)
    tl.store(TERMS + 5, kl)
    tl.store(TERMS + 6, beta)
    tl.store(TERMS + 7, total)
    tl.store(TERMS + 8, w_sum)
    tl.store(TERMS + 9, n)


@triton.jit(do_not_specialize=["N"])
def _loss_bwd_kernel(Z, F, Y, VALID, CW, FINE, COARSE, TERMS, GT, DZ, DF, DFINE, DKL, DREC, N, K, D, inv_tau,
                     kd_scale, g_fine, g_kd, g_feat, l_rec,
                     C: tl.constexpr, HAS_CW: tl.constexpr, TEACHER_GRAD: tl.constexpr, NEED_FINE: tl.constexpr,
                     NEED_KL: tl.constexpr, NEED_REC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     BLOCK_D: tl.constexpr):
    """TERMS (10,) the forward's terms; GT () d total; DZ (N, K), DF (C, N, K), DFINE (C, N, D)
    contiguous in their inputs' dtypes; DKL (N,) fp32; DREC () fp32.
    This program writes every gradient of BLOCK_N rows (and, program 0, d rec)."""
    offs_n, n_ok, k_ok, m2, idx, is_y, z, m, w = _loss_tile(Z, Y, VALID, CW, N, K, HAS_CW, BLOCK_N, BLOCK_K)
    g = tl.load(GT).to(tl.float32)
    beta = tl.load(TERMS + 6)
    w_sum = tl.load(TERMS + 8)
    n = tl.load(TERMS + 9)
    onehot = tl.where(is_y, 1.0, 0.0)
    dce = g * w / w_sum
    dfce = dce * g_fine
    dkd = (g * g_kd * kd_scale / n * inv_tau) * m
    dz = dce[:, None] * (tl.exp(_log_softmax(z, k_ok)) - onehot)
    log_pt = _log_softmax(z * inv_tau, k_ok)
    p_t = tl.where(k_ok[None, :], tl.exp(log_pt), 0.0)
    dfeat = -(g * g_feat / n) * m
    for c in tl.static_range(C):
        f = tl.load(F + c * N * K + idx, mask=m2, other=0.0).to(tl.float32)
        log_ps = _log_softmax(f * inv_tau, k_ok)
        df = dfce[:, None] * (tl.exp(_log_softmax(f, k_ok)) - onehot) + dkd[:, None] * (tl.exp(log_ps) - p_t)
        tl.store(DF + c * N * K + idx, df.to(DF.dtype.element_ty), mask=m2)
        if TEACHER_GRAD:
            a = tl.where(k_ok[None, :], log_pt - log_ps, 0.0)
            kl = tl.sum(p_t * a, 1)
            dz += dkd[:, None] * p_t * (a - kl[:, None])
        if NEED_FINE:
            dot, nx, ny = _cos_stats(FINE, COARSE, c, offs_n, n_ok, N, D, BLOCK_N, BLOCK_D)
            nxc = tl.maximum(nx, COS_EPS)
            inv = 1.0 / (nxc * tl.maximum(ny, COS_EPS))
            cos = dot * inv
            a_h = dfeat * inv
            # the norm's own gradient F_c / |F_c| (zero at F_c = 0), through cos's 1 / |F_c|
            a_x = tl.where(nx > 0, dfeat * cos / (nxc * tl.maximum(nx, 1e-30)), 0.0)
            for d0 in range(0, D, BLOCK_D):
                x, h, at, mk = _feature_tile(FINE, COARSE, c, offs_n, n_ok, d0, N, D, BLOCK_D)
                dx = a_h[:, None] * h - a_x[:, None] * x
                tl.store(DFINE + at, dx.to(DFINE.dtype.element_ty), mask=mk)
    tl.store(DZ + idx, dz.to(DZ.dtype.element_ty), mask=m2)
    if NEED_KL:
        tl.store(DKL + offs_n, (g * beta / n) * m, mask=n_ok)
    if NEED_REC:
        tl.store(DREC, g * l_rec, mask=tl.program_id(0) == 0)


def _block_k(K: int) -> int:
    return max(2, triton.next_power_of_2(K))


def _block_d(D: int) -> int:
    return max(16, min(64, triton.next_power_of_2(max(D, 1))))


def _u8(valid: torch.Tensor) -> torch.Tensor:
    return valid.view(torch.uint8) if valid.dtype == torch.bool else valid


def cmath_loss_fwd(z, f, fine, kl, rec, coarse, y, valid, cw, beta, beta_value, tau, kd_scale, g_fine, g_kd,
                   g_feat, l_rec):
    """z (N, K), f (C, N, K), fine (C, N, D), coarse (N, D), kl (N,) fp32 or None, rec () fp32 or
    None, y (N,) int64, valid (N,) bool, cw (K,) fp32 or None, beta () fp32 or None (then
    ``beta_value``), all contiguous -> (total () fp32, terms (10,) fp32 named by ``TERMS``)."""
    N, K = z.shape
    C, D = f.shape[0], fine.shape[-1]
    grid = triton.cdiv(max(N, 1), BLOCK_N)
    part = torch.empty(grid, N_PART, device=z.device, dtype=torch.float32)
    feat = bool(g_feat != 0.0)
    launch(_loss_rows_kernel, (grid,), z, f, y, _u8(valid), cw if cw is not None else z, fine, coarse,
           kl if kl is not None else z, part, N, K, D, 1.0 / float(tau), C=C, HAS_CW=cw is not None,
           HAS_KL=kl is not None, FEAT=feat, BLOCK_N=BLOCK_N, BLOCK_K=_block_k(K), BLOCK_D=_block_d(D),
           num_warps=NUM_WARPS)
    total = torch.empty((), device=z.device, dtype=torch.float32)
    terms = torch.empty(len(TERMS), device=z.device, dtype=torch.float32)
    launch(_loss_total_kernel, (1,), part, grid, rec if rec is not None else part,
           beta if beta is not None else part, total, terms, float(beta_value), float(kd_scale), float(g_fine),
           float(g_kd), float(g_feat), float(l_rec), HAS_REC=rec is not None, HAS_BETA=beta is not None,
           BLOCK_P=BLOCK_P, num_warps=4)
    return total, terms


def cmath_loss_bwd(dtotal, z, f, fine, coarse, y, valid, cw, terms, tau, kd_scale, g_fine, g_kd, g_feat, l_rec,
                   teacher_grad, need_fine, need_kl, need_rec):
    """Gradients (dz, df, dfine or None, dkl (N,) fp32 or None, drec () fp32 or None) of
    ``cmath_loss_fwd``'s total, from its terms and d total (() fp32)."""
    N, K = z.shape
    C, D = f.shape[0], fine.shape[-1]
    need_fine = bool(need_fine and g_feat != 0.0)
    dz, df = torch.empty_like(z), torch.empty_like(f)
    dfine = torch.empty_like(fine) if need_fine else None
    dkl = torch.empty(N, device=z.device, dtype=torch.float32) if need_kl else None
    drec = torch.empty((), device=z.device, dtype=torch.float32) if need_rec else None
    launch(_loss_bwd_kernel, (triton.cdiv(max(N, 1), BLOCK_N),), z, f, y, _u8(valid), cw if cw is not None else z,
           fine, coarse, terms, dtotal, dz, df, dfine if dfine is not None else z, dkl if dkl is not None else z,
           drec if drec is not None else z, N, K, D, 1.0 / float(tau), float(kd_scale), float(g_fine), float(g_kd),
           float(g_feat), float(l_rec), C=C, HAS_CW=cw is not None, TEACHER_GRAD=bool(teacher_grad),
           NEED_FINE=need_fine, NEED_KL=dkl is not None, NEED_REC=drec is not None, BLOCK_N=BLOCK_N,
           BLOCK_K=_block_k(K), BLOCK_D=_block_d(D), num_warps=NUM_WARPS)
    return dz, df, dfine, dkl, drec
