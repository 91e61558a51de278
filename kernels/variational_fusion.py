"""Fused reparameterised variational fusion (Triton): GEMM + clamp + sampling + KL in one kernel,
and the product-of-experts variant; forward and backward.

Gaussian, per row n of e (N, d_in) and latent column k < d_z:
    [mu | lv_raw] = e W^T + b                  W (2 d_z, d_in) as nn.Linear stores it
    lv   = clamp(lv_raw, -c, c)
    z    = mu + exp(lv / 2) * eps               eps ~ N(0, 1) drawn in the kernel (training)
    z    = mu                                   (eval)
    kl_n = -1/2 sum_k (1 + lv - mu^2 - exp(lv))  zero on rows whose row_mask is 0
The forward is one kernel: a (BLOCK_N x BLOCK_Z) tile of mu and of lv_raw accumulated with tl.dot
over d_in, the whole epilogue in registers, and one KL partial per (row, column block) — summed
over the column blocks afterwards in a fixed order (deterministic, no atomics). It saves [mu|lv_raw]
in fp32 for backward. The backward is one elementwise kernel for d[mu | lv_raw] (regenerating eps),
then the two GEMMs dE = dH W and dW = dH^T E, left to cuBLAS through torch: they are plain
large GEMMs, where cuBLAS is at least as fast as a Triton GEMM and needs no tuning here.

Product of experts, per element, M experts (mu_m, lv_m) (M, N, d_z) and the N(0, 1) prior:
    a_m = exp(-clamp(lv_m)); P = 1 + sum_m a_m; mu = sum_m a_m mu_m / P; lv = -log P
then the same sampling and KL. Forward and backward are one elementwise kernel each.

Noise: Philox ``tl.randn(seed, n * d_z + k)`` — the counter is the logical (row, column), never a
block coordinate, so the noise does not depend on the tile shape, and backward regenerates it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import dot_precision, launch, upcast
from .autotune import launch_tile
from .configs import dtype_name, fusion_tile


@triton.jit
def _noise(seed, rows, cols, d_z):
    """N(0, 1) noise of the (rows, cols) tile: one Philox counter per logical element."""
    return tl.randn(seed, rows[:, None] * d_z + cols[None, :])


@triton.jit
def _kl_terms(mu, lv):
    return 1.0 + lv - mu * mu - tl.exp(lv)


# N (the row count) changes from call to call: not specialised, so that a new batch never
# compiles a new variant. The seed is read through a pointer, never a run-time integer.
@triton.jit(do_not_specialize=["N"])
def _vf_fwd_kernel(
    E, W, BIAS, EPS, Z, HOUT, KLP, ROWMASK, SEED,
    logvar_clamp, N, d_in, d_z,
    stride_en, stride_wn,
    BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_EPS: tl.constexpr, SAMPLE: tl.constexpr,
    RETURN_EPS: tl.constexpr, SAVE_H: tl.constexpr, HAS_ROWMASK: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """E (N, d_in); W (2 d_z, d_in); BIAS (2 d_z,); SEED (1,) int64; EPS (N, d_z) contiguous, given noise (HAS_EPS)
    or the drawn noise out (RETURN_EPS, fp32); Z (N, d_z) contiguous; HOUT (N, 2 d_z) fp32 [mu | lv_raw] saved for
    backward (SAVE_H); KLP (n_col_blocks, N) fp32 KL partials; ROWMASK (N,) uint8.

    This program computes a BLOCK_N x BLOCK_Z tile of z (and of mu and lv) and its KL partial."""
    pid_n = tl.program_id(0)
    pid_z = tl.program_id(1)
    seed = tl.load(SEED)  # the noise seed (int64, on the device); not loaded when unused
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_z * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok = rows < N
    col_ok = cols < d_z
    acc_mu = tl.zeros([BLOCK_N, BLOCK_Z], tl.float32)
    acc_lv = tl.zeros([BLOCK_N, BLOCK_Z], tl.float32)
    for k0 in range(0, d_in, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d_in
        e = tl.load(E + rows[:, None] * stride_en + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                    other=0.0)
        # W tiles loaded transposed: (BLOCK_K, BLOCK_Z), rows of mu and of lv
        w_mask = k_ok[:, None] & col_ok[None, :]
        w_mu = tl.load(W + cols[None, :] * stride_wn + ks[:, None], mask=w_mask, other=0.0)
        w_lv = tl.load(W + (d_z + cols)[None, :] * stride_wn + ks[:, None], mask=w_mask, other=0.0)
        if UPCAST:
            e = e.to(tl.float32)
            w_mu = w_mu.to(tl.float32)
            w_lv = w_lv.to(tl.float32)
        acc_mu += tl.dot(e, w_mu, input_precision=PRECISION)
        acc_lv += tl.dot(e, w_lv, input_precision=PRECISION)
    if HAS_BIAS:
        acc_mu += tl.load(BIAS + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc_lv += tl.load(BIAS + d_z + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    offs = rows[:, None] * d_z + cols[None, :]
    if SAVE_H:
        h_ptrs = HOUT + rows[:, None] * (2 * d_z) + cols[None, :]
        tl.store(h_ptrs, acc_mu, mask=mask)
        tl.store(h_ptrs + d_z, acc_lv, mask=mask)
    mu = acc_mu
    lv = tl.minimum(tl.maximum(acc_lv, -logvar_clamp), logvar_clamp)
    if SAMPLE:
        if HAS_EPS:
            eps = tl.load(EPS + offs, mask=mask, other=0.0)
            eps = eps.to(tl.float32)
        else:
            eps = _noise(seed, rows, cols, d_z)
            if RETURN_EPS:
                tl.store(EPS + offs, eps, mask=mask)
        z = mu + tl.exp(0.5 * lv) * eps
    else:
        z = mu
    tl.store(Z + offs, z.to(Z.dtype.element_ty), mask=mask)
    kl = -0.5 * tl.sum(tl.where(mask, _kl_terms(mu, lv), 0.0), 1)
    if HAS_ROWMASK:
        keep = tl.load(ROWMASK + rows, mask=row_ok, other=0)
        kl = tl.where(keep != 0, kl, 0.0)
    tl.store(KLP + pid_z * N + rows, kl, mask=row_ok)


@triton.jit
def _latent_grads(mu, lv, DZ, dz_offs, DKL, EPS, eps_offs, ROWMASK, seed, rows, cols, row_ok, mask, d_z,
                  HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, HAS_EPS: tl.constexpr,
                  SAMPLE: tl.constexpr, HAS_ROWMASK: tl.constexpr):
    """(d mu, d lv) of z = mu + exp(lv / 2) eps and kl = -1/2 sum(1 + lv - mu^2 - exp(lv)) for a
    tile, from the upstream dz (at dz_offs) and per-row dkl; eps loaded or regenerated."""
    dmu = tl.zeros(mu.shape, tl.float32)
    dlv = tl.zeros(mu.shape, tl.float32)
    if HAS_DZ:
        dz = tl.load(DZ + dz_offs, mask=mask, other=0.0).to(tl.float32)
        dmu += dz
        if SAMPLE:
            if HAS_EPS:
                eps = tl.load(EPS + eps_offs, mask=mask, other=0.0).to(tl.float32)
            else:
                eps = _noise(seed, rows, cols, d_z)
            dlv += dz * eps * 0.5 * tl.exp(0.5 * lv)
    if HAS_DKL:
        dkl = tl.load(DKL + rows, mask=row_ok, other=0.0).to(tl.float32)
        if HAS_ROWMASK:
            keep = tl.load(ROWMASK + rows, mask=row_ok, other=0)
            dkl = tl.where(keep != 0, dkl, 0.0)
        # d kl / d mu = mu;  d kl / d lv = (exp(lv) - 1) / 2
        dmu += dkl[:, None] * mu
        dlv += dkl[:, None] * 0.5 * (tl.exp(lv) - 1.0)
    return dmu, dlv


@triton.jit(do_not_specialize=["N"])
def _vf_bwd_kernel(
    HSAVED, DZ, DKL, EPS, ROWMASK, DH, SEED,
    logvar_clamp, N, d_z,
    BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
    HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, HAS_EPS: tl.constexpr, SAMPLE: tl.constexpr,
    HAS_ROWMASK: tl.constexpr,
):
    """d[mu | lv_raw] (N, 2 d_z) from HSAVED (N, 2 d_z) fp32, DZ (N, d_z) contiguous, DKL (N,), the noise
    (given EPS or regenerated from the seed). Zero gradient into lv_raw where the clamp is active.

    This program computes a BLOCK_N x BLOCK_Z tile of d mu and of d lv_raw."""
    pid_n = tl.program_id(0)
    pid_z = tl.program_id(1)
    seed = tl.load(SEED)  # the noise seed (int64, on the device); not loaded when unused
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_z * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < d_z)[None, :]
    h_ptrs = HSAVED + rows[:, None] * (2 * d_z) + cols[None, :]
    mu = tl.load(h_ptrs, mask=mask, other=0.0)
    lv_raw = tl.load(h_ptrs + d_z, mask=mask, other=0.0)
    lv = tl.minimum(tl.maximum(lv_raw, -logvar_clamp), logvar_clamp)
    offs = rows[:, None] * d_z + cols[None, :]
    dmu, dlv = _latent_grads(mu, lv, DZ, offs, DKL, EPS, offs, ROWMASK, seed, rows, cols,
                             row_ok, mask, d_z, HAS_DZ, HAS_DKL, HAS_EPS, SAMPLE, HAS_ROWMASK)
    # torch.clamp passes the gradient where lo <= x <= hi (inclusive), and blocks it outside.
    dlv = tl.where((lv_raw >= -logvar_clamp) & (lv_raw <= logvar_clamp), dlv, 0.0)
    d_ptrs = DH + rows[:, None] * (2 * d_z) + cols[None, :]
    tl.store(d_ptrs, dmu.to(DH.dtype.element_ty), mask=mask)
    tl.store(d_ptrs + d_z, dlv.to(DH.dtype.element_ty), mask=mask)


@triton.jit
def _poe_combine(MU, LV, offs, mask, stride_m, logvar_clamp, M: tl.constexpr):
    """Precision P = 1 + sum_m exp(-lv_m) and the numerator sum_m exp(-lv_m) mu_m of a tile."""
    prec = tl.full(offs.shape, 1.0, tl.float32)
    num = tl.zeros(offs.shape, tl.float32)
    for m in tl.static_range(M):
        mu_m = tl.load(MU + m * stride_m + offs, mask=mask, other=0.0).to(tl.float32)
        lv_m = tl.load(LV + m * stride_m + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.exp(-tl.minimum(tl.maximum(lv_m, -logvar_clamp), logvar_clamp))
        prec += a
        num += a * mu_m
    return prec, num


@triton.jit(do_not_specialize=["N", "stride_m"])
def _poe_fwd_kernel(
    MU, LV, EPS, Z, KLP, ROWMASK, SEED,
    logvar_clamp, N, d_z, stride_m,
    M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
    HAS_EPS: tl.constexpr, SAMPLE: tl.constexpr, RETURN_EPS: tl.constexpr, HAS_ROWMASK: tl.constexpr,
):
    """MU, LV (M, N, d_z) contiguous per expert (stride_m between experts); EPS, Z (N, d_z)
    contiguous; KLP (n_col_blocks, N) fp32; ROWMASK (N,) uint8.

    This program combines the experts and samples a BLOCK_N x BLOCK_Z tile."""
    pid_n = tl.program_id(0)
    pid_z = tl.program_id(1)
    seed = tl.load(SEED)  # the noise seed (int64, on the device); not loaded when unused
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_z * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < d_z)[None, :]
    offs = rows[:, None] * d_z + cols[None, :]
    prec, num = _poe_combine(MU, LV, offs, mask, stride_m, logvar_clamp, M)
    mu = num / prec
    lv = -tl.log(prec)
    if SAMPLE:
        if HAS_EPS:
            eps = tl.load(EPS + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            eps = _noise(seed, rows, cols, d_z)
            if RETURN_EPS:
                tl.store(EPS + offs, eps, mask=mask)
        z = mu + tl.exp(0.5 * lv) * eps
    else:
        z = mu
    tl.store(Z + offs, z.to(Z.dtype.element_ty), mask=mask)
    kl = -0.5 * tl.sum(tl.where(mask, _kl_terms(mu, lv), 0.0), 1)
    if HAS_ROWMASK:
        keep = tl.load(ROWMASK + rows, mask=row_ok, other=0)
        kl = tl.where(keep != 0, kl, 0.0)
    tl.store(KLP + pid_z * N + rows, kl, mask=row_ok)


@triton.jit(do_not_specialize=["N", "stride_m"])
def _poe_bwd_kernel(
    MU, LV, DZ, DKL, EPS, ROWMASK, DMU, DLV, SEED,
    logvar_clamp, N, d_z, stride_m,
    M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Z: tl.constexpr,
    HAS_DZ: tl.constexpr, HAS_DKL: tl.constexpr, HAS_EPS: tl.constexpr, SAMPLE: tl.constexpr,
    HAS_ROWMASK: tl.constexpr,
):
    """DMU, DLV (M, N, d_z) from MU, LV (M, N, d_z), DZ (N, d_z), DKL (N,) and the noise.

    This program recombines the experts of a BLOCK_N x BLOCK_Z tile and writes each expert's
    gradient: d mu_m = d mu a_m / P, d lv_m = -a_m (d mu (mu_m - mu) - d lv) / P (0 if clamped)."""
    pid_n = tl.program_id(0)
    pid_z = tl.program_id(1)
    seed = tl.load(SEED)  # the noise seed (int64, on the device); not loaded when unused
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_z * BLOCK_Z + tl.arange(0, BLOCK_Z)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < d_z)[None, :]
    offs = rows[:, None] * d_z + cols[None, :]
    prec, num = _poe_combine(MU, LV, offs, mask, stride_m, logvar_clamp, M)
    mu = num / prec
    lv = -tl.log(prec)
    dmu, dlv = _latent_grads(mu, lv, DZ, offs, DKL, EPS, offs, ROWMASK, seed, rows, cols, row_ok, mask,
                             d_z, HAS_DZ, HAS_DKL, HAS_EPS, SAMPLE, HAS_ROWMASK)
    inv_p = 1.0 / prec
    for m in tl.static_range(M):
        mu_m = tl.load(MU + m * stride_m + offs, mask=mask, other=0.0).to(tl.float32)
        lv_raw = tl.load(LV + m * stride_m + offs, mask=mask, other=0.0).to(tl.float32)
        a = tl.exp(-tl.minimum(tl.maximum(lv_raw, -logvar_clamp), logvar_clamp))
        d_mu_m = dmu * a * inv_p
        d_lv_m = -a * (dmu * (mu_m - mu) - dlv) * inv_p
        d_lv_m = tl.where((lv_raw >= -logvar_clamp) & (lv_raw <= logvar_clamp), d_lv_m, 0.0)
        tl.store(DMU + m * stride_m + offs, d_mu_m.to(DMU.dtype.element_ty), mask=mask)
        tl.store(DLV + m * stride_m + offs, d_lv_m.to(DLV.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers. Tiles come from ``configs.fusion_tile`` (the GEMM tile per d_z / d_in bucket).

def _seed_arg(seed, placeholder):
    """The seed tensor ((1,) int64 on the device), or, when nothing is drawn, a placeholder pointer
    (the kernels never read it then)."""
    return seed if seed is not None else placeholder


def _rowmask_arg(row_mask, fallback):
    if row_mask is None:
        return fallback, False
    return row_mask.view(torch.uint8) if row_mask.dtype == torch.bool else row_mask, True


def variational_fusion_fwd(e, weight, bias, eps, row_mask, training, logvar_clamp, seed,
                           return_eps, save_h):
    """e (N, d_in), weight (2 d_z, d_in) with contiguous last dims; eps (N, d_z) contiguous or
    None -> (z (N, d_z), kl (N,) fp32, h (N, 2 d_z) fp32 or None, drawn eps or None)."""
    N, d_in = e.shape
    d_z = weight.shape[0] // 2
    tile = fusion_tile("vf_fwd", d_z, d_in, e.dtype)
    n_col = triton.cdiv(d_z, tile.block_n)
    z = torch.empty((N, d_z), device=e.device, dtype=e.dtype)
    klp = torch.empty((n_col, N), device=e.device, dtype=torch.float32)
    h = torch.empty((N, 2 * d_z), device=e.device, dtype=torch.float32) if save_h else None
    drawn = None
    if training and eps is None and return_eps:
        drawn = torch.empty((N, d_z), device=e.device, dtype=torch.float32)
    eps_arg = eps if eps is not None else (drawn if drawn is not None else z)
    rm, has_rm = _rowmask_arg(row_mask, klp)
    launch_tile("vf_fwd", _vf_fwd_kernel, lambda m: (triton.cdiv(N, m["BLOCK_N"]), n_col), tile,
           (tile.block_n, tile.block_k, dtype_name(e.dtype)), e, weight, bias if bias is not None else weight, eps_arg, z, h if h is not None else klp, klp, rm,
           _seed_arg(seed, klp), float(logvar_clamp), N, d_in, d_z, e.stride(0), weight.stride(0),
           BLOCK_Z=tile.block_n, BLOCK_K=tile.block_k, HAS_BIAS=bias is not None,
           HAS_EPS=eps is not None, SAMPLE=bool(training), RETURN_EPS=drawn is not None, SAVE_H=save_h,
           HAS_ROWMASK=has_rm, UPCAST=upcast(e.dtype), PRECISION=dot_precision(e.dtype),
           key_values=(d_in, d_z))
    # Column-block partials summed in a fixed order: deterministic.
    kl = klp.view(N) if n_col == 1 else klp.sum(dim=0)
    return z, kl, h, drawn


def variational_fusion_bwd_dh(h, dz, dkl, eps, row_mask, training, logvar_clamp, seed, out_dtype):
    """d[mu | lv_raw] (N, 2 d_z) in ``out_dtype``; dz and eps contiguous (or None)."""
    N, two_dz = h.shape
    d_z = two_dz // 2
    tile = fusion_tile("vf_elementwise", d_z, d_z, out_dtype)
    dh = torch.empty((N, two_dz), device=h.device, dtype=out_dtype)
    rm, has_rm = _rowmask_arg(row_mask, h)
    launch(_vf_bwd_kernel, (triton.cdiv(N, tile.block_m), triton.cdiv(d_z, tile.block_n)),
           h, dz if dz is not None else h, dkl if dkl is not None else h, eps if eps is not None else h,
           rm, dh, _seed_arg(seed, h), float(logvar_clamp), N, d_z,
           BLOCK_N=tile.block_m, BLOCK_Z=tile.block_n, HAS_DZ=dz is not None, HAS_DKL=dkl is not None,
           HAS_EPS=eps is not None, SAMPLE=bool(training), HAS_ROWMASK=has_rm,
           num_warps=tile.num_warps, num_stages=tile.num_stages)
    return dh


def poe_fusion_fwd(mu, logvar, eps, row_mask, training, logvar_clamp, seed, return_eps):
    """mu, logvar (M, N, d_z) contiguous -> (z (N, d_z), kl (N,) fp32, drawn eps or None)."""
    M, N, d_z = mu.shape
    tile = fusion_tile("vf_elementwise", d_z, d_z, mu.dtype)
    n_col = triton.cdiv(d_z, tile.block_n)
    z = torch.empty((N, d_z), device=mu.device, dtype=mu.dtype)
    klp = torch.empty((n_col, N), device=mu.device, dtype=torch.float32)
    drawn = None
    if training and eps is None and return_eps:
        drawn = torch.empty((N, d_z), device=mu.device, dtype=torch.float32)
    eps_arg = eps if eps is not None else (drawn if drawn is not None else z)
    rm, has_rm = _rowmask_arg(row_mask, klp)
    launch(_poe_fwd_kernel, (triton.cdiv(N, tile.block_m), n_col),
           mu, logvar, eps_arg, z, klp, rm, _seed_arg(seed, klp), float(logvar_clamp), N, d_z, mu.stride(0),
           M=M, BLOCK_N=tile.block_m, BLOCK_Z=tile.block_n, HAS_EPS=eps is not None, SAMPLE=bool(training),
           RETURN_EPS=drawn is not None, HAS_ROWMASK=has_rm,
           num_warps=tile.num_warps, num_stages=tile.num_stages)
    kl = klp.view(N) if n_col == 1 else klp.sum(dim=0)
    return z, kl, drawn


def poe_fusion_bwd(mu, logvar, dz, dkl, eps, row_mask, training, logvar_clamp, seed):
    M, N, d_z = mu.shape
    tile = fusion_tile("vf_elementwise", d_z, d_z, mu.dtype)
    dmu = torch.empty_like(mu)
    dlv = torch.empty_like(logvar)
    rm, has_rm = _rowmask_arg(row_mask, mu)
    launch(_poe_bwd_kernel, (triton.cdiv(N, tile.block_m), triton.cdiv(d_z, tile.block_n)),
           mu, logvar, dz if dz is not None else mu, dkl if dkl is not None else mu,
           eps if eps is not None else mu, rm, dmu, dlv, _seed_arg(seed, mu), float(logvar_clamp), N, d_z,
           mu.stride(0), M=M, BLOCK_N=tile.block_m, BLOCK_Z=tile.block_n, HAS_DZ=dz is not None,
           HAS_DKL=dkl is not None, HAS_EPS=eps is not None, SAMPLE=bool(training), HAS_ROWMASK=has_rm,
           num_warps=tile.num_warps, num_stages=tile.num_stages)
    return dmu, dlv
