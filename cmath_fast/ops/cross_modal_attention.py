"""``cross_modal_attention``: the fused Triton op behind the same interface as
``cross_modal_attention_ref`` (autograd Function + functional API)."""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._checks import check_lengths, check_streams, check_tensor
from ..profiling import nvtx_range
from ._common import autocast_inputs, check_device, kernel_dtype, philox_seed
from ._library import op

MAX_HEAD_DIM = 128


def _stacked(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S, B, Lk_max, H, dh) from S tensors (B, Lk_s, H, dh). No copy when the streams are equally
    spaced views of one buffer (as the fused CMA layer produces them); else one padded copy."""
    t0 = ts[0]
    same = all(t.shape == t0.shape and t.stride() == t0.stride() for t in ts)
    if same and len(ts) > 1:
        step = ts[1].data_ptr() - t0.data_ptr()
        size = t0.element_size()
        shared = all(t.untyped_storage().data_ptr() == t0.untyped_storage().data_ptr() for t in ts)
        if shared and step > 0 and step % size == 0 and all(
                t.data_ptr() - t0.data_ptr() == i * step for i, t in enumerate(ts)):
            return torch.as_strided(t0, (len(ts),) + tuple(t0.shape), (step // size,) + t0.stride(),
                                    t0.storage_offset())
    if len(ts) == 1:
        return t0.unsqueeze(0)
    B, _, H, dh = t0.shape
    lk = max(t.shape[1] for t in ts)
    out = t0.new_zeros((len(ts), B, lk, H, dh))
    for s, t in enumerate(ts):
        out[s, :, : t.shape[1]] = t
    return out


class CrossModalAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, gates, q_lengths, kv_lengths, sm_scale, dropout_p, seed, joint, n_streams, *kvs):
        ks, vs = kvs[:n_streams], kvs[n_streams:]
        k, v = _stacked(ks), _stacked(vs)
        if k.stride() != v.stride():  # the kernels address k and v with one set of strides
            k, v = k.contiguous(), v.contiguous()
        needs_grad = any(ctx.needs_input_grad)
        out, out_u, lse = op("cma_fwd")(q, k, v, gates, q_lengths, kv_lengths, seed, sm_scale, dropout_p,
                                        joint, needs_grad and gates is not None)
        ctx.save_for_backward(q, k, v, out, out_u, lse, gates, q_lengths, kv_lengths, seed)
        ctx.cfg = (sm_scale, dropout_p, joint, [t.shape[1] for t in ks])
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, out_u, lse, gates, q_lengths, kv_lengths, seed = ctx.saved_tensors
        sm_scale, dropout_p, joint, lks = ctx.cfg
        with nvtx_range("op/cross_modal_attention", "bwd"):
            dq, dkv, dg = op("cma_bwd")(dout, q, k, v, out, out_u, lse, gates, q_lengths, kv_lengths, seed,
                                        sm_scale, dropout_p, joint)
        dks = [dkv[s, :, :lk, 0] for s, lk in enumerate(lks)]
        dvs = [dkv[s, :, :lk, 1] for s, lk in enumerate(lks)]
        dg = dg.to(gates.dtype) if gates is not None else None
        return (dq, dg, None, None, None, None, None, None, None, *dks, *dvs)


def _check_gates_and_dropout(gates, shape, dropout_p):
    """The gates' shape (returned contiguous, as the kernels read them) and the dropout range."""
    if gates is not None:
        if tuple(gates.shape) != tuple(shape):
            raise ValueError(f"gates: expected shape {tuple(shape)}, got {tuple(gates.shape)}")
        gates = gates.contiguous()
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a probability in [0, 1), got {dropout_p}")
    return gates


class PackedKVAttentionFunction(torch.autograd.Function):
    """The same op with keys and values packed in one tensor kv (S, B, Lk, 2, H, dh) — the layout
    one GEMM over [W_k | W_v] produces. Its gradient comes back packed too, in one buffer that the
    backward kernels write directly (no per-stream slicing in autograd)."""

    @staticmethod
    def forward(ctx, q, kv, gates, q_lengths, kv_lengths, sm_scale, dropout_p, seed, joint, starts=None,
                max_len=0):
        k, v = kv.select(-3, 0), kv.select(-3, 1)
        out, out_u, lse = op("cma_fwd")(q, k, v, gates, q_lengths, kv_lengths, seed, sm_scale, dropout_p,
                                        joint, any(ctx.needs_input_grad) and gates is not None, starts, max_len)
        ctx.save_for_backward(q, kv, out, out_u, lse, gates, q_lengths, kv_lengths, seed, starts)
        ctx.cfg = (sm_scale, dropout_p, joint, max_len)
        return out

    @staticmethod
    def backward(ctx, dout):
        q, kv, out, out_u, lse, gates, q_lengths, kv_lengths, seed, starts = ctx.saved_tensors
        sm_scale, dropout_p, joint, max_len = ctx.cfg
        with nvtx_range("op/cross_modal_attention", "bwd"):
            dq, dkv, dg = op("cma_bwd")(dout, q, kv.select(-3, 0), kv.select(-3, 1), out, out_u, lse, gates,
                                        q_lengths, kv_lengths, seed, sm_scale, dropout_p, joint, starts, max_len)
        dg = dg.to(gates.dtype) if gates is not None else None
        return dq, dkv, dg, None, None, None, None, None, None, None, None


def cross_modal_attention_packed(q: torch.Tensor, kv: torch.Tensor, lengths: torch.Tensor, *,
                                 gates: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 softmax_scale: Optional[float] = None, joint: bool = False,
                                 rows=None) -> torch.Tensor:
    """:func:`cross_modal_attention` with every stream's keys and values packed in kv
    (S, B, L, 2, H, dh) — the layout one GEMM over [W_k | W_v] produces — and one length per
    dialogue shared by the queries and every stream (as in a CMA layer). Returns (B, L, S, H, dh).
    This is the form the CMATH model calls.

    ``rows`` (a :class:`cmath_fast.packing.PackedRows`, or any object with ``starts`` and
    ``max_len``): the dialogues' rows are packed instead of padded — q (N, H, dh), kv
    (S, N, 2, H, dh), gates (N, S, H), the result (N, S, H, dh); dialogue b owns rows
    ``starts[b]`` to ``starts[b + 1]`` (its ``lengths[b]`` utterances first), and no row attends
    across a dialogue boundary."""
    q, kv, gates = autocast_inputs(q, kv, gates)
    packed = rows is not None
    check_tensor("q", q, ndim=3 if packed else 4, floating=True)
    kernel_dtype("q", q)
    check_device("q", q)
    H, dh = q.shape[-2:]
    check_tensor("kv", kv, ndim=5 if packed else 6, dtype=q.dtype, device=q.device)
    S = kv.shape[0]
    lead = tuple(q.shape[:-2])
    if tuple(kv.shape[1:]) != lead + (2, H, dh):
        raise ValueError(f"kv: expected shape {(S,) + lead + (2, H, dh)}, got {tuple(kv.shape)}")
    if q.stride(-1) != 1 or kv.stride(-1) != 1:
        raise ValueError("q and kv: the last (head) dim must be contiguous")
    if packed:
        starts, max_len = rows.starts, int(rows.max_len)
        B, L = starts.shape[0] - 1, max_len
        check_tensor("rows.starts", starts, ndim=1, dtype=torch.int32, device=q.device)
        check_lengths("lengths", lengths, B, L)
    else:
        starts, max_len = None, 0
        B, L = lead
        check_lengths("lengths", lengths, B, L)
    if gates is not None:
        check_tensor("gates", gates, ndim=len(lead) + 2, floating=True, device=q.device)
    gates = _check_gates_and_dropout(gates, lead + (S, H), dropout_p)
    scale = dh ** -0.5 if softmax_scale is None else float(softmax_scale)
    q_len = lengths.to(device=q.device, dtype=torch.int32)
    kv_len = q_len.expand(S, B)
    seed = philox_seed(q.device) if dropout_p > 0 else None
    with nvtx_range("op/cross_modal_attention"):
        return PackedKVAttentionFunction.apply(q, kv, gates, q_len, kv_len, scale, float(dropout_p), seed,
                                               bool(joint), starts, max_len)


def cross_modal_attention(
    q: torch.Tensor,
    ks: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    q_lengths: torch.Tensor,
    kv_lengths: Sequence[torch.Tensor],
    *,
    gates: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    dropout_p: float = 0.0,
    joint: bool = False,
    return_dropout_mask: bool = False,
):
    """Fused multi-stream attention with one shared query; the arguments and result of
    :func:`cmath_fast.reference.cross_modal_attention_ref`, differentiable in q, every k and v,
    and the gates.

    dropout_p > 0 drops attention probabilities with Philox in the kernel (seed drawn on q's device
    from torch's generator: ``torch.manual_seed`` reproduces it, and it never crosses to the host).
    ``return_dropout_mask=True`` also returns the per-stream multipliers (B, H, Lq, Lk_s) that the
    reference's ``dropout_mask`` takes. Under ``torch.autocast`` the inputs are cast to the autocast
    dtype, as matmul-class ops are.
    """
    q, ks, vs, gates = autocast_inputs(q, list(ks), list(vs), gates)
    check_tensor("q", q, ndim=4, floating=True)
    kernel_dtype("q", q)
    check_device("q", q)
    B, Lq, H, dh = q.shape
    if not 1 <= dh <= MAX_HEAD_DIM:
        raise ValueError(f"q: head dim must be in [1, {MAX_HEAD_DIM}], got {dh}")
    S = check_streams(q, ks, vs, kv_lengths, gates, None)
    check_lengths("q_lengths", q_lengths, B, Lq)
    for name, t in [("q", q)] + [(f"ks[{s}]", ks[s]) for s in range(S)] + \
            [(f"vs[{s}]", vs[s]) for s in range(S)]:
        if t.stride(-1) != 1:
            raise ValueError(f"{name}: the last (head) dim must be contiguous, got strides {t.stride()}")
    gates = _check_gates_and_dropout(gates, (B, Lq, S, H), dropout_p)

    scale = dh ** -0.5 if softmax_scale is None else float(softmax_scale)
    q_len = q_lengths.to(device=q.device, dtype=torch.int32)
    kv_len = torch.stack([t.to(device=q.device, dtype=torch.int32) for t in kv_lengths])
    seed = philox_seed(q.device) if dropout_p > 0 else None
    with nvtx_range("op/cross_modal_attention"):
        out = CrossModalAttentionFunction.apply(q, gates, q_len, kv_len, scale, float(dropout_p), seed,
                                                bool(joint), S, *ks, *vs)
    if not return_dropout_mask:
        return out
    return out, dropout_multipliers(B, S, H, Lq, [t.shape[1] for t in ks], dropout_p, seed, q.device)


def dropout_multipliers(B: int, S: int, H: int, Lq: int, lks: List[int], dropout_p: float, seed,
                        device) -> List[torch.Tensor]:
    """The dropout multipliers (keep / (1 - p)) per stream (B, H, Lq, Lk_s) for a seed."""
    from ..kernels.cross_modal_attention import cross_modal_attention_dropout_mask

    if dropout_p == 0:
        return [torch.ones(B, H, Lq, lk, device=device) for lk in lks]
    keep = cross_modal_attention_dropout_mask(B, S, H, Lq, max(lks), dropout_p, seed, device)
    return [keep[:, s, :, :, :lk].float() / (1.0 - dropout_p) for s, lk in enumerate(lks)]
