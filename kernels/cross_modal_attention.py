"""Fused multi-stream attention with one shared query (Triton), forward and backward.

Math, per batch row b, head h and stream s (S streams, each with its own key length):
    P_s   = softmax_j(q_i . k_{s,j} * scale)           over the stream's valid keys j < kv_len[s, b]
    O_s   = (P_s * Z_s) V_s                             Z_s: dropout multiplier (keep / (1 - p))
    out_s = g_s * O_s                                   g: gates (B, Lq, S, H), optional
``JOINT``: one softmax over the union of the streams' valid keys; out_s is stream s's share.
Rows i >= q_len[b] and rows with no valid key are written as zeros (never NaN).

Layouts (last dim contiguous everywhere):
    q    (B, Lq, H, dh)          k, v (S, B, Lk, H, dh)    (any strides on the first four dims,
                                                             k and v sharing them)
    gates (B, Lq, S, H)          contiguous
    out  (B, Lq, S, H, dh)       contiguous: the layout an output projection over [O_1; ...; O_S]
                                 consumes
    lse  (B, S, H, Lq) fp32      log2-sum-exp of the scaled scores (base 2), BIG for empty rows
    q_len (B,) int32             kv_len (S, B) int32 (any stride between streams)
Kernels take strides only for the tensors the caller hands in (q, k/v, dk/dv); buffers the
launchers allocate contiguous (out, lse, delta, dq, the gated output gradient; the gates, made
contiguous by the op) are addressed from their shapes.
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

import torch
import triton
import triton.language as tl

from ._common import (BIG, LOG2E, NEG, block_d, dot_precision, launch, load_rows, stride_units,
                      tile_prologue, upcast)
from .autotune import launch_tile
from .configs import attention_tile, dtype_name, length_bucket


@triton.jit
def _keep(seed, row, offs_m, offs_n, Lk, p_drop):
    """Dropout keep-mask of the (offs_m, offs_n) tile of one (batch, stream, head) row."""
    rnd = tl.rand(seed + row, offs_m[:, None] * Lk + offs_n[None, :])
    return rnd >= p_drop


@triton.jit
def _dialogue_rows(b, START, Lq, PACKED: tl.constexpr):
    """(first row, row extent) of dialogue b. Padded: b * Lq and Lq. Packed: START[b] and
    START[b + 1] - START[b] (the dialogue's rows, plus any padding rows the layout gave it)."""
    r0 = b * Lq
    ext = Lq
    if PACKED:
        r0 = tl.load(START + b)
        ext = tl.load(START + b + 1) - r0
    return r0, ext


@triton.jit
def _batch_offset(b, r0, stride_b, stride_m, PACKED: tl.constexpr):
    """Offset of dialogue b's first row in a strided tensor: its batch stride, or (packed) its
    first row times the row stride."""
    if PACKED:
        off = r0 * stride_m
    else:
        off = b * stride_b
    return off


@triton.jit
def _out_offsets(r0, offs_m, s, h, offs_d, S: tl.constexpr, H, dh):
    """Offsets into a contiguous (rows, S, H, dh) tensor (out, its gradient) of one tile of the
    dialogue whose first row is r0."""
    return ((r0 + offs_m[:, None]) * S + s) * H * dh + h * dh + offs_d[None, :]


# Integers that change from call to call are not specialised: divisibility by 16 of a length, a
# batch stride or the seed would otherwise compile a new variant for some new values.
@triton.jit(do_not_specialize=["stride_qb", "stride_ks", "stride_kb", "Lq", "Lk"])
def _cma_fwd_kernel(
    Q, K, V, G, O, OU, LSE, QLEN, KVLEN, SEED, START,
    sm_scale, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_kvls, SU,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    EVEN_D: tl.constexpr, HAS_GATES: tl.constexpr, STORE_UNGATED: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, PACKED: tl.constexpr,
):
    """Forward. Q (B, Lq, H, dh); K, V (S, B, Lk, H, dh) sharing strides; G (B, Lq, S, H) gates;
    O, OU (B, Lq, S, H, dh) gated and ungated outputs; LSE (B, S, H, Lq) fp32; QLEN (B,) and
    KVLEN (S, B) int32; SEED (1,) int64, the dropout seed, read on the device. Constexprs: S streams; BLOCK_M x BLOCK_N tiles; BLOCK_D = dh padded to a
    power of two (EVEN_D when equal); feature flags as named; UPCAST loads to fp32 (the
    interpreter's bf16 is wrong); PRECISION the tl.dot input precision; PACKED: rows are packed
    (see ``_dialogue_rows``; q, k, v, gates and outputs have one row axis, B = 1 in the strides).

    This program processes BLOCK_M query rows of one (batch, head) for every stream."""
    stride_qb, stride_ks, stride_kb = stride_qb * SU, stride_ks * SU, stride_kb * SU  # see stride_units
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    r0, ext = _dialogue_rows(b, START, Lq, PACKED)
    seed = tl.load(SEED)  # unused (and not loaded) without dropout
    offs_m, offs_d, row_ok, d_ok = tile_prologue(pid_m, BLOCK_M, q_len, BLOCK_D, dh)
    if EVEN_D:
        d_ok = offs_d < BLOCK_D  # constant true: the compiler drops the head-dim mask
    # A tile wholly past q_len runs no key loop: its rows are written as zeros.
    active = pid_m * BLOCK_M < q_len
    q_base = Q + _batch_offset(b, r0, stride_qb, stride_qm, PACKED) + h * stride_qh
    q = load_rows(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], row_ok, d_ok, UPCAST)
    qk_scale = sm_scale * LOG2E
    kv_b = _batch_offset(b, r0, stride_kb, stride_kn, PACKED)

    if JOINT:
        # Pass 1: the log-sum-exp over the union of every stream's valid keys.
        m_i = tl.full([BLOCK_M], NEG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        for s in tl.static_range(S):
            kv_len = tl.load(KVLEN + s * stride_kvls + b)
            n_end = tl.where(active, kv_len, 0)
            k_base = K + s * stride_ks + kv_b + h * stride_kh
            for start_n in range(0, n_end, BLOCK_N):
                offs_n = start_n + tl.arange(0, BLOCK_N)
                n_ok = offs_n < kv_len
                k = tl.load(k_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                            mask=n_ok[None, :] & d_ok[:, None], other=0.0)
                if UPCAST:
                    k = k.to(tl.float32)
                qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
                qk = tl.where(n_ok[None, :], qk, NEG)
                m_new = tl.maximum(m_i, tl.max(qk, 1))
                p = tl.where(n_ok[None, :], tl.exp2(qk - m_new[:, None]), 0.0)
                l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(p, 1)
                m_i = m_new
        lse_joint = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), BIG)

    for s in tl.static_range(S):
        kv_len = tl.load(KVLEN + s * stride_kvls + b)
        n_end = tl.where(active, kv_len, 0)
        row = (b * S + s) * H + h
        kv_base = s * stride_ks + kv_b + h * stride_kh
        m_i = tl.full([BLOCK_M], NEG, tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        for start_n in range(0, n_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_len
            # K loaded transposed (BLOCK_D, BLOCK_N): the dot's right operand as it is.
            k = tl.load(K + kv_base + offs_n[None, :] * stride_kn + offs_d[:, None],
                        mask=n_ok[None, :] & d_ok[:, None], other=0.0)
            v = load_rows(V + kv_base + offs_n[:, None] * stride_kn + offs_d[None, :], n_ok, d_ok, False)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            qk = tl.dot(q, k, input_precision=PRECISION) * qk_scale
            if JOINT:
                # The normaliser is known: no online rescaling.
                p = tl.where(n_ok[None, :], tl.exp2(qk - lse_joint[:, None]), 0.0)
            else:
                qk = tl.where(n_ok[None, :], qk, NEG)
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
            lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), BIG)
        tl.store(LSE + row * Lq + offs_m, lse, mask=offs_m < Lq)

        o = tl.where(row_ok[:, None], o, 0.0)
        o_off = _out_offsets(r0, offs_m, s, h, offs_d, S, H, dh)
        o_mask = (offs_m < ext)[:, None] & d_ok[None, :]
        if HAS_GATES:
            if STORE_UNGATED:
                tl.store(OU + o_off, o.to(OU.dtype.element_ty), mask=o_mask)
            g = tl.load(G + ((r0 + offs_m) * S + s) * H + h, mask=row_ok, other=0.0).to(tl.float32)
            o = o * g[:, None]
        tl.store(O + o_off, o.to(O.dtype.element_ty), mask=o_mask)


@triton.jit(do_not_specialize=["stride_dob", "Lq"])
def _cma_bwd_preprocess_kernel(
    DO, O, OU, G, DELTA, DG, DOU, QLEN, START,
    stride_dob, stride_dom, stride_dos, stride_doh, SU,
    Lq, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HAS_GATES: tl.constexpr,
    PACKED: tl.constexpr,
):
    """Delta (B, S, H, Lq) fp32 = rowsum(dO_s . O_s) with dO_s = g_s dOut_s, d(gates)
    (B, Lq, S, H) fp32 = rowsum(dOut_s . O_s) (O_s ungated), and with gates DOU = dO_s, the
    gradient of the ungated output that the two main backward kernels read: gating once here keeps
    it off their hot loops (and their registers). DO (B, Lq, S, H, dh) as autograd hands it in;
    O, OU, DOU (B, Lq, S, H, dh) and G (B, Lq, S, H) contiguous.

    This program processes BLOCK_M query rows of one (batch, head) for every stream."""
    stride_dob = stride_dob * SU  # see stride_units
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    r0, ext = _dialogue_rows(b, START, Lq, PACKED)
    offs_m, offs_d, row_ok, d_ok = tile_prologue(pid_m, BLOCK_M, q_len, BLOCK_D, dh)
    in_q = offs_m < ext
    do_base = DO + _batch_offset(b, r0, stride_dob, stride_dom, PACKED) + h * stride_doh
    # A loop, not unrolled: each stream's tiles die at the end of its iteration (unrolled, the
    # three streams' loads are scheduled together and spill).
    for s in range(S):
        off = _out_offsets(r0, offs_m, s, h, offs_d, S, H, dh)
        do = load_rows(do_base + offs_m[:, None] * stride_dom + s * stride_dos + offs_d[None, :],
                       row_ok, d_ok, True)
        if HAS_GATES:
            ou = load_rows(OU + off, row_ok, d_ok, True)
            g_off = ((r0 + offs_m) * S + s) * H + h
            g = tl.load(G + g_off, mask=row_ok, other=0.0).to(tl.float32)
            dg = tl.sum(do * ou, 1)
            tl.store(DG + g_off, dg, mask=in_q)
            delta = g * dg
            tl.store(DOU + off, (do * g[:, None]).to(DOU.dtype.element_ty), mask=in_q[:, None] & d_ok[None, :])
        else:
            o = load_rows(O + off, row_ok, d_ok, True)
            delta = tl.sum(do * o, 1)
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


@triton.jit(do_not_specialize=["stride_qb", "stride_ks", "stride_kb", "stride_dob", "stride_dks",
                               "stride_dkb", "Lq", "Lk"])
def _cma_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, QLEN, KVLEN, SEED, START,
    sm_scale, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_dob, stride_dom, stride_dos, stride_doh,
    stride_dks, stride_dkb, stride_dkn, stride_dkh,
    stride_kvls, SU,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, PACKED: tl.constexpr,
):
    """dK, dV (S, B, Lk, H, dh) sharing strides, of one key block. DO (B, Lq, S, H, dh) is the
    gradient of the ungated output (the preprocess applied the gates).

    This program processes BLOCK_N keys of one (batch, stream, head), looping over query blocks."""
    stride_qb, stride_ks, stride_kb = stride_qb * SU, stride_ks * SU, stride_kb * SU  # see stride_units
    stride_dob, stride_dks, stride_dkb = stride_dob * SU, stride_dks * SU, stride_dkb * SU
    pid_n = tl.program_id(0)
    sh = tl.program_id(1)
    b = tl.program_id(2)
    s = sh // H
    h = sh % H
    q_len = tl.load(QLEN + b)
    kv_len = tl.load(KVLEN + s * stride_kvls + b)
    r0, ext = _dialogue_rows(b, START, Lq, PACKED)
    seed = tl.load(SEED)
    offs_n, offs_d, n_ok, d_ok = tile_prologue(pid_n, BLOCK_N, kv_len, BLOCK_D, dh)
    row = (b * S + s) * H + h
    kv_off = (s * stride_ks + _batch_offset(b, r0, stride_kb, stride_kn, PACKED) + offs_n[:, None] * stride_kn
              + h * stride_kh + offs_d[None, :])
    q_base = Q + _batch_offset(b, r0, stride_qb, stride_qm, PACKED) + h * stride_qh
    do_base = DO + _batch_offset(b, r0, stride_dob, stride_dom, PACKED) + s * stride_dos + h * stride_doh
    k = load_rows(K + kv_off, n_ok, d_ok, UPCAST)
    v = load_rows(V + kv_off, n_ok, d_ok, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    qk_scale = sm_scale * LOG2E
    m_end = tl.where(pid_n * BLOCK_N < kv_len, q_len, 0)
    for start_m in range(0, m_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_ok = offs_m < q_len
        q = load_rows(q_base + offs_m[:, None] * stride_qm + offs_d[None, :], m_ok, d_ok, UPCAST)
        do = load_rows(do_base + offs_m[:, None] * stride_dom + offs_d[None, :], m_ok, d_ok, UPCAST)
        lse = tl.load(LSE + row * Lq + offs_m, mask=m_ok, other=BIG)
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
    out_off = (s * stride_dks + _batch_offset(b, r0, stride_dkb, stride_dkn, PACKED) + offs_n[:, None] * stride_dkn
               + h * stride_dkh + offs_d[None, :])
    k_ext = Lk
    if PACKED:
        k_ext = ext  # the keys are the dialogue's own rows
    out_mask = (offs_n < k_ext)[:, None] & d_ok[None, :]
    tl.store(DK + out_off, dk.to(DK.dtype.element_ty), mask=out_mask)
    tl.store(DV + out_off, dv.to(DV.dtype.element_ty), mask=out_mask)


@triton.jit(do_not_specialize=["stride_qb", "stride_ks", "stride_kb", "stride_dob", "Lq", "Lk"])
def _cma_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, QLEN, KVLEN, SEED, START,
    sm_scale, p_drop,
    stride_qb, stride_qm, stride_qh,
    stride_ks, stride_kb, stride_kn, stride_kh,
    stride_dob, stride_dom, stride_dos, stride_doh,
    stride_kvls, SU,
    Lq, Lk, H, dh,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    JOINT: tl.constexpr, HAS_DROPOUT: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, PACKED: tl.constexpr,
):
    """dQ (B, Lq, H, dh) contiguous, of one query block, summed over the streams inside the
    program. DO (B, Lq, S, H, dh) as for dK/dV.

    This program processes BLOCK_M query rows of one (batch, head), looping over every stream's
    key blocks."""
    stride_qb, stride_ks, stride_kb = stride_qb * SU, stride_ks * SU, stride_kb * SU  # see stride_units
    stride_dob = stride_dob * SU
    pid_m = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.program_id(2)
    q_len = tl.load(QLEN + b)
    r0, ext = _dialogue_rows(b, START, Lq, PACKED)
    seed = tl.load(SEED)
    offs_m, offs_d, m_ok, d_ok = tile_prologue(pid_m, BLOCK_M, q_len, BLOCK_D, dh)
    active = pid_m * BLOCK_M < q_len
    q = load_rows(Q + _batch_offset(b, r0, stride_qb, stride_qm, PACKED) + offs_m[:, None] * stride_qm
                  + h * stride_qh + offs_d[None, :], m_ok, d_ok, UPCAST)
    kv_b = _batch_offset(b, r0, stride_kb, stride_kn, PACKED)
    do_base = DO + _batch_offset(b, r0, stride_dob, stride_dom, PACKED) + h * stride_doh
    qk_scale = sm_scale * LOG2E
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for s in tl.static_range(S):
        kv_len = tl.load(KVLEN + s * stride_kvls + b)
        row = (b * S + s) * H + h
        do = load_rows(do_base + offs_m[:, None] * stride_dom + s * stride_dos + offs_d[None, :],
                       m_ok, d_ok, UPCAST)
        lse = tl.load(LSE + row * Lq + offs_m, mask=m_ok, other=BIG)
        delta = _load_delta(DELTA, b, s, h, offs_m, m_ok, Lq, H, S, JOINT)
        n_end = tl.where(active, kv_len, 0)
        kv_base = s * stride_ks + kv_b + h * stride_kh
        for start_n in range(0, n_end, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            n_ok = offs_n < kv_len
            k = tl.load(K + kv_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(V + kv_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=n_ok[:, None] & d_ok[None, :], other=0.0)
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
    tl.store(DQ + ((r0 + offs_m[:, None]) * H + h) * dh + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=(offs_m < ext)[:, None] & d_ok[None, :])


@triton.jit(do_not_specialize=["Lq", "Lk"])
def _cma_dropout_mask_kernel(
    MASK, SEED, p_drop, Lq, Lk, H,
    S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The keep-mask (B, S, H, Lq, Lk) int8 that the attention kernels use (debug path).

    This program writes one BLOCK_M x BLOCK_N tile of one (batch, stream, head) row."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    row = tl.program_id(2)
    seed = tl.load(SEED)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    keep = _keep(seed, row, offs_m, offs_n, Lk, p_drop)
    tl.store(MASK + row * Lq * Lk + offs_m[:, None] * Lk + offs_n[None, :], keep.to(tl.int8),
             mask=(offs_m < Lq)[:, None] & (offs_n < Lk)[None, :])


# ---------------------------------------------------------------------------------------------
# Launchers: plain tensors in, tensors out. Tiles come from ``configs.attention_tile``: one per
# power-of-two bucket of the padded query length, so new lengths reuse a compiled kernel.

def _seed_arg(seed, placeholder, dropout_p):
    """The seed tensor, or (without dropout, when the kernels never read it) a placeholder."""
    return seed if dropout_p > 0.0 else placeholder


def _check_kv(k, v, what="k and v"):
    if k.stride() != v.stride() or k.stride(-1) != 1:
        raise ValueError(f"{what}: expected equal strides with a contiguous last dim, got "
                         f"{k.stride()} and {v.stride()}")


def _layout(q, k, starts, max_len):
    """(B, Lq, Lk, q as (B, Lq, H, dh), k as (S, B, Lk, H, dh)) of either layout. Packed rows
    (``starts`` given): q (N, H, dh) and k (S, N, H, dh) are read as one batch of N rows; dialogue
    b owns rows starts[b]..starts[b+1] and has at most ``max_len`` of them."""
    if starts is None:
        return q.shape[0], q.shape[1], k.shape[2], q, k
    return starts.shape[0] - 1, max_len, max_len, q.unsqueeze(0), k.unsqueeze(1)


def cross_modal_attention_fwd(q, k, v, q_lengths, kv_lengths, gates, sm_scale, dropout_p, seed,
                              joint, store_ungated, starts=None, max_len=0):
    """q (B, Lq, H, dh); k, v (S, B, Lk, H, dh) sharing strides; q_lengths (B,) int32;
    kv_lengths (S, B) int32; gates (B, Lq, S, H) contiguous or None; seed (1,) int64 on the
    device (read only with dropout). Returns (out (B, Lq, S, H, dh),
    out_ungated or None, lse (B, S, H, Lq)).

    Packed rows: ``starts`` (B + 1,) int32, the first row of each dialogue and the row count last
    (each dialogue's extent, its rows and any padding rows after them, at most ``max_len``); q
    (N, H, dh), k, v (S, N, H, dh), gates (N, S, H), out (N, S, H, dh); every stream's keys are
    the dialogue's own rows. Rows of an extent past the dialogue's length are written as zeros."""
    B, Lq, Lk, q4, k5 = _layout(q, k, starts, max_len)
    H, dh = q.shape[-2:]
    S = k.shape[0]
    _check_kv(k, v)
    if gates is not None and not gates.is_contiguous():
        raise ValueError("gates: expected a contiguous gates tensor")
    rows = q.shape[:-2]
    out = torch.empty(rows + (S, H, dh), device=q.device, dtype=q.dtype)
    out_u = torch.empty_like(out) if (gates is not None and store_ungated) else None
    lse = torch.empty((B, S, H, Lq), device=q.device, dtype=torch.float32)
    bd = block_d(dh)
    tile = attention_tile("cma_fwd", Lq, bd, q.dtype)
    row_key = (length_bucket(Lq), bd, dtype_name(q.dtype))
    launch_tile("cma_fwd", _cma_fwd_kernel, lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), H, B), tile, row_key,
           q, k, v, gates if gates is not None else out, out, out_u if out_u is not None else out, lse,
           q_lengths, kv_lengths, _seed_arg(seed, q_lengths, dropout_p), _starts_arg(starts, q_lengths),
           float(sm_scale), float(dropout_p),
           *_stride_args(q4, k5, kv_lengths.stride(0)), Lq, Lk, H, dh,
           S=S, BLOCK_D=bd, EVEN_D=bd == dh,
           HAS_GATES=gates is not None, STORE_UNGATED=out_u is not None, JOINT=bool(joint),
           HAS_DROPOUT=dropout_p > 0.0, UPCAST=upcast(q.dtype), PRECISION=dot_precision(q.dtype),
           PACKED=starts is not None, key_values=(Lq, dh))
    return out, out_u, lse


def _stride_args(q4, k5, kvls, do5=None, dk5=None):
    """The kernels' stride arguments in their order: q's (batch, row, head), k's (stream, batch,
    row, head), then dO's and dK's (batch or stream, batch, row, head) when given, the key lengths'
    stream stride and SU. The batch and stream strides, which change from batch to batch and are
    not specialised, are passed as counts of SU elements (``stride_units``)."""
    qb, qm, qh = q4.stride()[:3]
    ks, kb, kn, kh = k5.stride()[:4]
    varying = [qb, ks, kb] + ([do5.stride(0)] if do5 is not None else []) \
        + (list(dk5.stride()[:2]) if dk5 is not None else [])
    unit, c = stride_units(*varying)
    args = [c[0], qm, qh, c[1], c[2], kn, kh]
    if do5 is not None:
        args += [c[3], *do5.stride()[1:4]]
    if dk5 is not None:
        args += [c[4], c[5], *dk5.stride()[2:4]]
    return (*args, kvls, unit)


def _starts_arg(starts, placeholder):
    """The row starts, or (padded rows, when the kernels never read them) a placeholder."""
    return starts if starts is not None else placeholder


def cross_modal_attention_bwd(dout, q, k, v, out, out_u, lse, gates, q_lengths, kv_lengths,
                              sm_scale, dropout_p, seed, joint, dk=None, dv=None, starts=None, max_len=0):
    """Gradients (dq, dk, dv, dgates) of the forward above; dgates (fp32) is None without gates.
    ``dk``, ``dv``: optional outputs shaped like k with identical strides (e.g. the two halves
    of one packed key/value gradient), written in place. ``starts``, ``max_len``: packed rows, as
    for the forward."""
    B, Lq, Lk, q4, k5 = _layout(q, k, starts, max_len)
    H, dh = q.shape[-2:]
    S = k.shape[0]
    _check_kv(k, v)
    if dout.stride(-1) != 1:
        dout = dout.contiguous()
    packed = starts is not None
    starts_arg = _starts_arg(starts, q_lengths)
    bd = block_d(dh)
    rows = q.shape[:-2]
    delta = torch.empty((B, S, H, Lq), device=q.device, dtype=torch.float32)
    if gates is not None:
        dgates = torch.empty(rows + (S, H), device=q.device, dtype=torch.float32)
        dout_u = torch.empty(rows + (S, H, dh), device=q.device, dtype=dout.dtype)
    else:
        dgates, dout_u = None, dout
    dout5 = dout.unsqueeze(0) if packed else dout
    pre = attention_tile("cma_bwd_preprocess", Lq, bd, q.dtype)
    row_key = (length_bucket(Lq), bd, dtype_name(q.dtype))
    launch_tile("cma_bwd_preprocess", _cma_bwd_preprocess_kernel, lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), H, B),
           pre, row_key, dout, out, out_u if out_u is not None else out, gates if gates is not None else dout,
           delta, dgates if dgates is not None else delta, dout_u, q_lengths, starts_arg,
           *stride_units(dout5.stride(0))[1], *dout5.stride()[1:4], stride_units(dout5.stride(0))[0], Lq, H, dh, S=S, BLOCK_D=bd, HAS_GATES=gates is not None, PACKED=packed, key_values=(Lq, dh))

    flags = dict(S=S, BLOCK_D=bd, JOINT=bool(joint), HAS_DROPOUT=dropout_p > 0.0, UPCAST=upcast(q.dtype),
                 PRECISION=dot_precision(q.dtype), PACKED=packed, key_values=(Lq, dh))
    if dk is None:
        dk = torch.empty(tuple(k.shape), device=q.device, dtype=k.dtype)
        dv = torch.empty_like(dk)
    else:
        _check_kv(dk, dv, "dk and dv")
    dk5 = dk.unsqueeze(1) if packed else dk
    dout_u5 = dout_u.unsqueeze(0) if packed else dout_u
    scalars = (_seed_arg(seed, q_lengths, dropout_p), starts_arg, float(sm_scale), float(dropout_p))
    launch_tile("cma_bwd_dkdv", _cma_bwd_dkdv_kernel, lambda m: (triton.cdiv(Lk, m["BLOCK_N"]), S * H, B),
           attention_tile("cma_bwd_dkdv", Lq, bd, q.dtype), row_key, q, k, v, dout_u, lse, delta, dk, dv, q_lengths, kv_lengths, *scalars,
           *_stride_args(q4, k5, kv_lengths.stride(0), dout_u5, dk5), Lq, Lk, H, dh, **flags)
    dq = torch.empty(tuple(q.shape), device=q.device, dtype=q.dtype)
    launch_tile("cma_bwd_dq", _cma_bwd_dq_kernel, lambda m: (triton.cdiv(Lq, m["BLOCK_M"]), H, B),
           attention_tile("cma_bwd_dq", Lq, bd, q.dtype), row_key, q, k, v, dout_u, lse, delta, dq, q_lengths, kv_lengths, *scalars,
           *_stride_args(q4, k5, kv_lengths.stride(0), dout_u5), Lq, Lk, H, dh, **flags)
    return dq, dk, dv, dgates


def cross_modal_attention_dropout_mask(B, S, H, Lq, Lk, dropout_p, seed, device):
    """The keep-mask (B, S, H, Lq, Lk) bool the kernels use for this seed (debug/testing)."""
    mask = torch.empty((B, S, H, Lq, Lk), device=device, dtype=torch.int8)
    tile = attention_tile("cma_dropout_mask", Lq, 16, torch.float32)
    launch(_cma_dropout_mask_kernel,
           (triton.cdiv(Lq, tile.block_m), triton.cdiv(Lk, tile.block_n), B * S * H),
           mask, seed, float(dropout_p), Lq, Lk, H, S=S, BLOCK_M=tile.block_m, BLOCK_N=tile.block_n)
    return mask.bool()
