"""Fused multi-stream attention with one shared query (Triton), forward and backward.

Math, per batch row b, head h and stream s (S streams, each with its own key length):
    P_s   = softmax_j(q_i . k_{s,j} * scale)           over the stream's valid keys j < kv_len[s, b]
    O_s   = (P_s * Z_s) V_s                             Z_s: dropout multiplier (keep / (1 - p))
    out_s = g_s * O_s                                   g: gates (B, Lq, S, H), optional
``JOINT``: one softmax over the union of the streams' valid keys; out_s is stream s's share.
Rows i >= q_len[b] and rows with no valid key are written as zeros (never NaN).

Layouts (last dim contiguous everywhere):
    q    (B, Lq, H, dh)          k, v (S, B, Lk, H, dh)    (any strides on the first four dims)
    out  (B, Lq, S, H, dh)       the layout an output projection over [O_1; ...; O_S] consumes
    lse  (B, S, H, Lq) fp32      log2-sum-exp of the scaled scores (base 2), BIG for empty rows
    q_len (B,) int32             kv_len (S, B) int32
Saved for backward: q, k, v, out, the ungated output when gates are given (so that d(gates) is
exact where a gate is 0), lse, the lengths and the dropout seed (the mask is regenerated).

Backward, deterministic (no atomics): a preprocess kernel computes Delta_s = rowsum(dO_s . O_s)
and d(gates); one kernel per (key block, stream, head) accumulates dK, dV over the query blocks;
one kernel per (query block, head) accumulates dQ over every stream's key blocks.

Dropout: Philox, one stream per (batch row, stream, head) (seed + that row's index), counter
i * Lk + j from the logical query/key coordinates, never from block sizes: the mask is the same
whatever the tile shape, and backward regenerates it.

This module knows nothing of CMATH; ``cmath_fast.ops`` wraps it in autograd.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
# lse stored for a row with no valid key: exp2(score - BIG) underflows to exactly 0.
BIG = 1.0e30
NEG = -1.0e30


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _keep(seed, row, offs_m, offs_n, Lk, p_drop):
    """Dropout keep-mask of the (offs_m, offs_n) tile of one (batch, stream, head) row."""
    rnd = tl.rand(seed + row, offs_m[:, None] * Lk + offs_n[None, :])
    return rnd >= p_drop


# Integers that change with the lengths are not specialised (divisibility by 16 would otherwise
# compile a new variant for some new lengths).
_LENGTH_ARGS = ["Lq", "Lk", "stride_qb", "stride_ks", "stride_kb", "stride_vs", "stride_vb",
                "stride_gb", "stride_ob", "stride_dob", "stride_dks", "stride_dkb", "stride_dqb"]


def _nospec(*names):
    return [n for n in _LENGTH_ARGS if n in names]


@triton.jit(do_not_specialize=_nospec("Lq", "Lk", "stride_qb", "stride_ks", "stride_kb", "stride_vs",
                                      "stride_vb", "stride_gb", "stride_ob"))
def _cma_fwd_kernel(
    Q, K, V, G, O, OU, LSE, QLEN, KVLEN,
    sm_scale, seed, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_vs, stride_vb, stride_vn, stride_vh,
    stride_gb, stride_gm, stride_gs,
    stride_ob, stride_om, stride_os, stride_oh,
    stride_kvls,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, HAS_GATES: tl.constexpr, STORE_UNGATED: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Forward. Q (B, Lq, H, dh); K, V (S, B, Lk, H, dh); G (B, Lq, S, H) gates; O, OU
    (B, Lq, S, H, dh) gated and ungated outputs; LSE (B, S, H, Lq) fp32; QLEN (B,) and KVLEN (S, B)
    int32. Constexprs: S streams; BLOCK_M x BLOCK_N tiles; BLOCK_D = dh padded to a power of two
    (EVEN_D when equal); feature flags as named; UPCAST loads to fp32 (the interpreter's bf16 is
    wrong); PRECISION the tl.dot input precision.

    This program processes BLOCK_M query rows of one (batch, head) for every stream."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    d_ok = offs_d < dh
    # A tile wholly past q_len runs no key loop: its rows are written as zeros.
    active = pid_m * BLOCK_M < q_len

    q_ptrs = Q + b * stride_qb + offs_m[:, None] * stride_qm + h * stride_qh + offs_d[None, :]
    if EVEN_D:
        q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    else:
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634

    if JOINT:
        # Pass 1: the log-sum-exp over the union of every stream's valid keys.
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for s in tl.static_range(S):
            kv_len = tl.load(KVLEN + s * stride_kvls + b)
            n_end = tl.where(active, kv_len, 0)
            for start_n in range(0, n_end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                n_ok = offs_n < kv_len
                k_ptrs = (K + s * stride_ks + b * stride_kb + offs_n[None, :] * stride_kn
                          + h * stride_kh + offs_d[:, None])
                k = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
                if UPCAST:
                    k = k.to(tl.float32)
                qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
                qk = tl.where(n_ok[None, :], qk, -1.0e30)
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                p = tl.where(n_ok[None, :], tl.exp2(qk - m_new[:, None]), 0.0)
                l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(p, 1)
                m_i = m_new
        lse_joint = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), 1.0e30)

    for s in tl.static_range(S):
        kv_len = tl.load(KVLEN + s * stride_kvls + b)
        n_end = tl.where(active, kv_len, 0)
        row = (b * S + s) * H + h
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, n_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_len
            k_ptrs = (K + s * stride_ks + b * stride_kb + offs_n[None, :] * stride_kn
                      + h * stride_kh + offs_d[:, None])
            v_ptrs = (V + s * stride_vs + b * stride_vb + offs_n[:, None] * stride_vn
                      + h * stride_vh + offs_d[None, :])
            k = tl.load(k_ptrs, mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            v = tl.load(v_ptrs, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            if JOINT:
                # The normaliser is known: no online rescaling.
                p = tl.where(n_ok[None, :], tl.exp2(qk - lse_joint[:, None]), 0.0)
            else:
                qk = tl.where(n_ok[None, :], qk, -1.0e30)
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                # Online softmax: rescale what was accumulated under the old running max.
                alpha = tl.exp2(m_i - m_new)
                p = tl.where(n_ok[None, :], tl.exp2(qk - m_new[:, None]), 0.0)
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None]
                m_i = m_new
            if HAS_DROPOUT:
                keep = _keep(seed, row, offs_m, offs_n, Lk, p_drop)
                p = tl.where(keep, p / (1.0 - p_drop), 0.0)
            acc += tl.dot(p.to(v.dtype), v, input_precision=PRECISION)

        if JOINT:
            o = acc
            lse = lse_joint
        else:
            nonempty = l_i > 0.0
            o = acc / tl.where(nonempty, l_i, 1.0)[:, None]
            lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), 1.0e30)
        tl.store(LSE + row * Lq + offs_m, lse, mask=offs_m < Lq)

        o = tl.where(row_ok[:, None], o, 0.0)
        o_off = b * stride_ob + offs_m[:, None] * stride_om + s * stride_os + h * stride_oh + offs_d[None, :]
        if EVEN_D:
            o_mask = (offs_m < Lq)[:, None]
        else:
            o_mask = (offs_m < Lq)[:, None] & d_ok[None, :]
        if HAS_GATES:
            if STORE_UNGATED:
                tl.store(OU + o_off, o.to(OU.dtype.element_ty), mask=o_mask)
            g = tl.load(G + b * stride_gb + offs_m * stride_gm + s * stride_gs + h, mask=row_ok,
                        other=0.0).to(tl.float32)
            o = o * g[:, None]
        tl.store(O + o_off, o.to(O.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=_nospec("Lq", "stride_dob", "stride_ob", "stride_gb"))
def _cma_bwd_preprocess_kernel(
    DO, O, OU, G, DELTA, DG, DOU, QLEN,
    stride_dob, stride_dom, stride_dos, stride_doh,
    stride_ob, stride_om, stride_os, stride_oh,
    stride_gb, stride_gm, stride_gs,
    Lq, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_GATES: tl.constexpr,
):
    """Delta (B, S, H, Lq) fp32 = rowsum(dO_s . O_s) with dO_s = g_s dOut_s, d(gates)
    (B, Lq, S, H) fp32 = rowsum(dOut_s . O_s) (O_s ungated), and with gates DOU = dO_s, the
    gradient of the ungated output (B, Lq, S, H, dh, contiguous) that the two main backward kernels
    read: gating once here keeps it off their hot loops (and their registers).
    DO, O, OU (B, Lq, S, H, dh).

    This program processes BLOCK_M query rows of one (batch, head) for every stream."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    row_ok = offs_m < q_len
    mask = row_ok[:, None] & (offs_d < dh)[None, :]
    for s in tl.static_range(S):
        do = tl.load(DO + b * stride_dob + offs_m[:, None] * stride_dom + s * stride_dos
                     + h * stride_doh + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        o_off = b * stride_ob + offs_m[:, None] * stride_om + s * stride_os + h * stride_oh + offs_d[None, :]
        if HAS_GATES:
            ou = tl.load(OU + o_off, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(G + b * stride_gb + offs_m * stride_gm + s * stride_gs + h, mask=row_ok,
                        other=0.0).to(tl.float32)
            dg = tl.sum(do * ou, 1)
            tl.store(DG + b * stride_gb + offs_m * stride_gm + s * stride_gs + h, dg, mask=offs_m < Lq)
            delta = g * dg
            dou_off = (((b * Lq + offs_m[:, None]) * S + s) * H + h) * dh + offs_d[None, :]
            tl.store(DOU + dou_off, (do * g[:, None]).to(DOU.dtype.element_ty),
                     mask=(offs_m < Lq)[:, None] & (offs_d < dh)[None, :])
        else:
            ou = tl.load(O + o_off, mask=mask, other=0.0).to(tl.float32)
            delta = tl.sum(do * ou, 1)
        tl.store(DELTA + ((b * S + s) * H + h) * Lq + offs_m, delta, mask=offs_m < Lq)


@triton.jit
def _load_delta(DELTA, b, s, h, offs_m, m_ok, Lq, H, S: tl.constexpr, JOINT: tl.constexpr):
    """Delta of stream s, or (JOINT) the sum over streams: the union shares one softmax."""
    if JOINT:
        delta = tl.zeros(offs_m.shape, tl.float32)
        for t in tl.static_range(S):
            delta += tl.load(DELTA + ((b * S + t) * H + h) * Lq + offs_m, mask=m_ok, other=0.0)
    else:
        delta = tl.load(DELTA + ((b * S + s) * H + h) * Lq + offs_m, mask=m_ok, other=0.0)
    return delta


@triton.jit(do_not_specialize=_nospec("Lq", "Lk", "stride_qb", "stride_ks", "stride_kb", "stride_vs",
                                      "stride_vb", "stride_dob", "stride_dks", "stride_dkb"))
def _cma_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QLEN, KVLEN,
    sm_scale, seed, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_vs, stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_dos, stride_doh,
    stride_dks, stride_dkb, stride_dkn, stride_dkh,
    stride_kvls,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dK, dV (S, B, Lk, H, dh) of one key block. DO (B, Lq, S, H, dh) is the gradient of the
    ungated output (the preprocess applied the gates).

    This program processes BLOCK_N keys of one (batch, stream, head), looping over query blocks."""
    pid_n = tl.program_id(0)
    sh = tl.program_id(1)
    b = tl.program_id(2)
    s = sh // H
    h = sh % H
    q_len = tl.load(QLEN + b)
    kv_len = tl.load(KVLEN + s * stride_kvls + b)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    n_ok = offs_n < kv_len
    d_ok = offs_d < dh
    row = (b * S + s) * H + h
    k = tl.load(K + s * stride_ks + b * stride_kb + offs_n[:, None] * stride_kn + h * stride_kh
                + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    v = tl.load(V + s * stride_vs + b * stride_vb + offs_n[:, None] * stride_vn + h * stride_vh
                + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    m_end = tl.where(pid_n * BLOCK_N < kv_len, q_len, 0)
    for start_m in range(0, m_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qm + h * stride_qh + offs_d[None, :],
                    mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        do = tl.load(DO + b * stride_dob + offs_m[:, None] * stride_dom + s * stride_dos
                     + h * stride_doh + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + row * Lq + offs_m, mask=m_ok, other=1.0e30)
        qkT = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.where(n_ok[:, None] & m_ok[None, :], tl.exp2(qkT - lse[None, :]), 0.0)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)
        if HAS_DROPOUT:
            keepT = tl.trans(_keep(seed, row, offs_m, offs_n, Lk, p_drop))
            pdT = tl.where(keepT, pT / (1.0 - p_drop), 0.0)
            dpT = tl.where(keepT, dpT / (1.0 - p_drop), 0.0)
        else:
            pdT = pT
        dv += tl.dot(pdT.to(do.dtype), do, input_precision=PRECISION)
        delta = _load_delta(DELTA, b, s, h, offs_m, m_ok, Lq, H, S, JOINT)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * sm_scale
    out_off = s * stride_dks + b * stride_dkb + offs_n[:, None] * stride_dkn + h * stride_dkh + offs_d[None, :]
    out_mask = (offs_n < Lk)[:, None] & d_ok[None, :]
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=_nospec("Lq", "Lk", "stride_qb", "stride_ks", "stride_kb", "stride_vs",
                                      "stride_vb", "stride_dob", "stride_dqb"))
def _cma_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QLEN, KVLEN,
    sm_scale, seed, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_vs, stride_vb, stride_vn, stride_vh,
    stride_dob, stride_dom, stride_dos, stride_doh,
    stride_dqb, stride_dqm, stride_dqh,
    stride_kvls,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    """dQ (B, Lq, H, dh) of one query block, summed over the streams inside the program.

    This program processes BLOCK_M query rows of one (batch, head), looping over every stream's
    key blocks."""
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    m_ok = offs_m < q_len
    d_ok = offs_d < dh
    active = pid_m * BLOCK_M < q_len
    q = tl.load(Q + b * stride_qb + offs_m[:, None] * stride_qm + h * stride_qh + offs_d[None, :],
                mask=m_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in tl.static_range(S):
        kv_len = tl.load(KVLEN + s * stride_kvls + b)
        row = (b * S + s) * H + h
        do = tl.load(DO + b * stride_dob + offs_m[:, None] * stride_dom + s * stride_dos
                     + h * stride_doh + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            do = do.to(tl.float32)
        lse = tl.load(LSE + row * Lq + offs_m, mask=m_ok, other=1.0e30)
        delta = _load_delta(DELTA, b, s, h, offs_m, m_ok, Lq, H, S, JOINT)
        n_end = tl.where(active, kv_len, 0)
        for start_n in range(0, n_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_len
            k = tl.load(K + s * stride_ks + b * stride_kb + offs_n[:, None] * stride_kn
                        + h * stride_kh + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(V + s * stride_vs + b * stride_vb + offs_n[:, None] * stride_vn
                        + h * stride_vh + offs_d[None, :], mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
            p = tl.where(m_ok[:, None] & n_ok[None, :], tl.exp2(qk - lse[:, None]), 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            if HAS_DROPOUT:
                keep = _keep(seed, row, offs_m, offs_n, Lk, p_drop)
                dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + offs_m[:, None] * stride_dqm + h * stride_dqh + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=(offs_m < Lq)[:, None] & d_ok[None, :])


@triton.jit
def _cma_dropout_mask_kernel(
    MASK, seed, p_drop, Lq, Lk, H,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The keep-mask (B, S, H, Lq, Lk) int8 that the attention kernels use (debug path).

    This program writes one BLOCK_M x BLOCK_N tile of one (batch, stream, head) row."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    row = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, row, offs_m, offs_n, Lk, p_drop)
    tl.store(MASK + row * Lq * Lk + offs_m[:, None] * Lk + offs_n[None, :], keep.to(tl.int8),
             mask=(offs_m < Lq)[:, None] & (offs_n < Lk)[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers: plain tensors in, tensors out. Block sizes: one config under the interpreter (its
# programs run one after another; multi-config autotuning needs a driver). On a GPU, a config per
# power-of-two bucket of the padded query length (new lengths reuse it: no recompilation), chosen
# so that no kernel spills registers on sm_90 (checked by the ahead-of-time compile test).

INTERPRET_BLOCKS = (16, 16)


def length_bucket(n: int) -> int:
    """Power-of-two bucket of a padded length, clipped to [16, 128]."""
    return max(16, min(128, triton.next_power_of_2(max(int(n), 1))))


def fwd_config(Lq: int, block_d: int, gpu: bool = None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the forward kernel."""
    if not (gpu if gpu is not None else not interpreting()):
        return INTERPRET_BLOCKS + (1, 1)
    bucket = length_bucket(Lq)
    if bucket <= 32:
        return bucket, 32, 2 if bucket == 16 else 4, 2
    if block_d > 64:
        return 64, 64, 8, 2
    return (64, 64, 4, 2) if bucket == 64 else (128, 64, 8, 2)


def bwd_config(Lq: int, block_d: int, gpu: bool = None):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) of the dK/dV and dQ kernels."""
    if not (gpu if gpu is not None else not interpreting()):
        return INTERPRET_BLOCKS + (1, 1)
    bucket = length_bucket(Lq)
    if block_d > 64:
        return 32, 64, 8, 2  # both backward kernels spill at 64 x 64 with dh 128
    if bucket <= 32:
        return bucket, 32, 4, 2
    return 64, 64, 4, 2


def launcher_configs():
    """Every (kind, BLOCK_M, BLOCK_N, num_warps, num_stages, BLOCK_D) the launchers can choose
    on a GPU, for the ahead-of-time compile check."""
    out = set()
    for bucket in (16, 32, 64, 128):
        for block_d in (16, 32, 64, 128):
            out.add(("fwd",) + fwd_config(bucket, block_d, gpu=True) + (block_d,))
            out.add(("bwd",) + bwd_config(bucket, block_d, gpu=True) + (block_d,))
    return sorted(out)


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE dots (tf32 would lose ~3 decimal digits against an fp32 reference).
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(dh: int) -> int:
    return max(16, triton.next_power_of_2(dh))


def cross_modal_attention_fwd(q, k, v, q_lengths, kv_lengths, gates, sm_scale, dropout_p, seed,
                              joint, store_ungated):
    """q (B, Lq, H, dh); k, v (S, B, Lk, H, dh); q_lengths (B,) int32; kv_lengths (S, B) int32;
    gates (B, Lq, S, H) contiguous or None. Returns (out (B, Lq, S, H, dh), out_ungated or None,
    lse (B, S, H, Lq))."""
    B, Lq, H, dh = q.shape
    S, Lk = k.shape[0], k.shape[2]
    out = torch.empty((B, Lq, S, H, dh), device=q.device, dtype=q.dtype)
    out_u = torch.empty_like(out) if (gates is not None and store_ungated) else None
    lse = torch.empty((B, S, H, Lq), device=q.device, dtype=torch.float32)
    block_d = _block_d(dh)
    bm, bn, warps, stages = fwd_config(Lq, block_d)
    g = gates if gates is not None else out  # placeholder pointer, never read
    gs = gates.stride() if gates is not None else (0, 0, 0, 0)
    _cma_fwd_kernel[(triton.cdiv(Lq, bm), H, B)](
        q, k, v, g, out, out_u if out_u is not None else out, lse, q_lengths, kv_lengths,
        float(sm_scale), int(seed), float(dropout_p),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        gs[0], gs[1], gs[2],
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        kv_lengths.stride(0),
        Lq, Lk, H, dh,
        S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, EVEN_D=block_d == dh,
        HAS_GATES=gates is not None, STORE_UNGATED=out_u is not None, JOINT=bool(joint),
        HAS_DROPOUT=dropout_p > 0.0, UPCAST=interpreting() or q.dtype == torch.float32,
        PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=stages)
    return out, out_u, lse


def cross_modal_attention_bwd(dout, q, k, v, out, out_u, lse, gates, q_lengths, kv_lengths,
                              sm_scale, dropout_p, seed, joint, dk=None, dv=None):
    """Gradients (dq, dk, dv, dgates) of the forward above; dgates (fp32) is None without gates.
    ``dk``, ``dv``: optional (S, B, Lk, H, dh) outputs with identical strides (e.g. the two halves
    of one packed key/value gradient), written in place."""
    B, Lq, H, dh = q.shape
    S, Lk = k.shape[0], k.shape[2]
    if not dout.is_contiguous():
        dout = dout.contiguous()
    block_d = _block_d(dh)
    delta = torch.empty((B, S, H, Lq), device=q.device, dtype=torch.float32)
    if gates is not None:
        dgates = torch.empty((B, Lq, S, H), device=q.device, dtype=torch.float32)
        dout_u = torch.empty_like(dout)
        gs = gates.stride()
    else:
        dgates, dout_u, gs = None, dout, (0, 0, 0, 0)
    pm = fwd_config(Lq, block_d)[0]
    _cma_bwd_preprocess_kernel[(triton.cdiv(Lq, pm), H, B)](
        dout, out, out_u if out_u is not None else out, gates if gates is not None else dout,
        delta, dgates if dgates is not None else delta, dout_u, q_lengths,
        dout.stride(0), dout.stride(1), dout.stride(2), dout.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        gs[0], gs[1], gs[2],
        Lq, H, dh,
        S=S, BLOCK_M=pm, BLOCK_D=block_d, HAS_GATES=gates is not None)

    bm, bn, warps, stages = bwd_config(Lq, block_d)
    flags = dict(S=S, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=block_d, JOINT=bool(joint),
                 HAS_DROPOUT=dropout_p > 0.0, UPCAST=interpreting() or q.dtype == torch.float32,
                 PRECISION=dot_precision(q.dtype), num_warps=warps, num_stages=stages)
    if dk is None:
        dk = torch.empty((S, B, Lk, H, dh), device=q.device, dtype=k.dtype)
        dv = torch.empty_like(dk)
    elif dk.stride() != dv.stride() or dk.stride(-1) != 1:
        raise ValueError("dk and dv must share strides, with a contiguous last dim")
    do = dout_u
    _cma_bwd_dkdv_kernel[(triton.cdiv(Lk, bn), S * H, B)](
        q, k, v, do, lse, delta, dk, dv, q_lengths, kv_lengths,
        float(sm_scale), int(seed), float(dropout_p),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        do.stride(0), do.stride(1), do.stride(2), do.stride(3),
        dk.stride(0), dk.stride(1), dk.stride(2), dk.stride(3),
        kv_lengths.stride(0),
        Lq, Lk, H, dh, **flags)
    dq = torch.empty((B, Lq, H, dh), device=q.device, dtype=q.dtype)
    _cma_bwd_dq_kernel[(triton.cdiv(Lq, bm), H, B)](
        q, k, v, do, lse, delta, dq, q_lengths, kv_lengths,
        float(sm_scale), int(seed), float(dropout_p),
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        do.stride(0), do.stride(1), do.stride(2), do.stride(3),
        dq.stride(0), dq.stride(1), dq.stride(2),
        kv_lengths.stride(0),
        Lq, Lk, H, dh, **flags)
    return dq, dk, dv, dgates


def cross_modal_attention_dropout_mask(B, S, H, Lq, Lk, dropout_p, seed, device):
    """The keep-mask (B, S, H, Lq, Lk) bool the kernels use for this seed (debug/testing)."""
    mask = torch.empty((B, S, H, Lq, Lk), device=device, dtype=torch.int8)
    bm, bn = INTERPRET_BLOCKS if interpreting() else (32, 32)
    _cma_dropout_mask_kernel[(triton.cdiv(Lq, bm), triton.cdiv(Lk, bn), B * S * H)](
        mask, int(seed), float(dropout_p), Lq, Lk, H, S=S, BLOCK_M=bm, BLOCK_N=bn)
    return mask.bool()
