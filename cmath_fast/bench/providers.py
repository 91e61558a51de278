"""Benchmark providers: the same computation by each implementation, built from one shape.

A provider is a zero-argument callable returning the output tensor(s); building one raises
``Unavailable`` with the reason when its library or torch feature is missing. ``check_*`` compares
a provider's result with the reference before anything is timed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

from ..reference import cross_modal_attention_ref, poe_fusion_ref, variational_fusion_ref
from .shapes import AttentionShape

# triton_rows: ours on packed rows (no padded row computed or stored), as the fused model calls it.
ATTENTION_PROVIDERS = ("eager", "sdpa", "varlen_fa2", "flex", "xformers", "triton", "triton_rows")
# cublas_gemms: only the GEMMs the Gaussian op needs (e W^T forward; dH W and dH^T e backward),
# through torch.matmul: the floor the fused op is held against (no epilogue, no sampling, no KL).
FUSION_PROVIDERS = ("eager", "compile", "triton", "cublas_gemms")
# eager / compile / compile_ro: the reference model, as is and under torch.compile (default and
# reduce-overhead modes); triton: the fused model; triton_compile: the fused model under
# torch.compile (its kernels are custom operators); triton_graph: the fused model replayed from a
# CUDA graph per shape bucket (cmath_fast.graphs, what the trainer runs on CUDA).
MODEL_PROVIDERS = ("eager", "compile", "compile_ro", "triton", "triton_compile", "triton_graph")
# The epoch rows: the trainer's loop and evaluation over a synthetic preset.
EPOCH_PROVIDERS = ("eager", "triton", "triton_graph")
# bf16: bf16 weights and features; bf16-mixed: fp32 weights under torch.autocast(bfloat16).
MODEL_PRECISIONS = ("bf16", "bf16-mixed")


class Unavailable(RuntimeError):
    """This provider cannot run here; the message says why (recorded as the skip reason)."""


@dataclass
class AttentionInputs:
    """One CMA layer's attention inputs: C centrals stacked on the batch axis (B' = C B)."""

    q: torch.Tensor          # (B', L, H, dh)
    kv: torch.Tensor         # (S, B', L, 2, H, dh)
    gates: torch.Tensor      # (B', L, S, H)
    lengths: torch.Tensor    # (B',) int64, on the device
    lengths_list: List[int]

    @property
    def streams(self) -> int:
        return self.kv.shape[0]

    def ks(self):
        return [self.kv[s, :, :, 0] for s in range(self.streams)]

    def vs(self):
        return [self.kv[s, :, :, 1] for s in range(self.streams)]

    def leaves(self):
        return [self.q, self.kv, self.gates]


def attention_inputs(shape: AttentionShape, dtype=torch.bfloat16, device="cuda", seed=0,
                     requires_grad=True) -> AttentionInputs:
    g = torch.Generator().manual_seed(seed)
    B = shape.batch * shape.centrals
    L, H, dh, S = shape.max_len, shape.heads, shape.head_dim, shape.streams
    mk = lambda *s: torch.randn(*s, generator=g).to(device, dtype).requires_grad_(requires_grad)
    lens = list(shape.lengths) * shape.centrals
    gates = torch.rand(B, L, S, H, generator=g)
    gates[:, :, 0] = 1.0
    return AttentionInputs(q=mk(B, L, H, dh), kv=mk(S, B, L, 2, H, dh),
                           gates=gates.to(device, dtype).requires_grad_(requires_grad),
                           lengths=torch.tensor(lens, device=device), lengths_list=lens)


def _pack(x: torch.Tensor, lengths: List[int]) -> torch.Tensor:
    """(B, L, H, dh) right-padded -> (sum L_b, H, dh) packed."""
    return torch.cat([x[b, :n] for b, n in enumerate(lengths)], dim=0)


def _unpack(x: torch.Tensor, lengths: List[int], L: int) -> torch.Tensor:
    out = x.new_zeros((len(lengths), L) + tuple(x.shape[1:]))
    start = 0
    for b, n in enumerate(lengths):
        out[b, :n] = x[start:start + n]
        start += n
    return out


def attention_provider(name: str, inp: AttentionInputs) -> Callable[[], torch.Tensor]:
    """A callable computing the layer's C x S gated attentions -> (B', L, S, H, dh)."""
    L = inp.q.shape[1]
    S = inp.streams
    if name == "eager":
        return lambda: cross_modal_attention_ref(inp.q, inp.ks(), inp.vs(), inp.lengths,
                                                 [inp.lengths] * S, gates=inp.gates)
    if name in ("triton", "triton_rows"):
        from ..ops.cross_modal_attention import cross_modal_attention_packed
    if name == "triton":
        return lambda: cross_modal_attention_packed(inp.q, inp.kv, inp.lengths, gates=inp.gates)
    if name == "triton_rows":
        from ..packing import pack_rows
        # Packed once, outside the timed region (as for varlen_fa2; the model packs once per step).
        rows = pack_rows(torch.tensor(inp.lengths_list), L).to(inp.q.device)
        qp = rows.pack(inp.q.detach()).requires_grad_(inp.q.requires_grad)
        kvp = inp.kv.detach().flatten(1, 2).index_select(1, rows.index).requires_grad_(True)
        gp = rows.pack(inp.gates.detach()).requires_grad_(True)
        layout = rows.stacked(1)

        def packed_rows():
            return cross_modal_attention_packed(qp, kvp, inp.lengths, gates=gp, rows=layout)
        packed_rows.packed = True
        packed_rows.leaves = [qp, kvp, gp]
        return packed_rows
    if name == "sdpa":
        keep = (torch.arange(L, device=inp.q.device)[None, :] < inp.lengths[:, None])[:, None, None, :]

        def sdpa():
            q = inp.q.transpose(1, 2)
            outs = [F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=keep)
                    .transpose(1, 2) for k, v in zip(inp.ks(), inp.vs())]
            return torch.stack(outs, dim=2) * inp.gates[..., None]
        return sdpa
    if name == "varlen_fa2":
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError as exc:
            raise Unavailable(f"torch {torch.__version__} has no torch.nn.attention.varlen ({exc})")
        if inp.q.dtype not in (torch.float16, torch.bfloat16):
            raise Unavailable("varlen FlashAttention takes fp16/bf16 only")
        cu = torch.tensor([0] + list(torch.tensor(inp.lengths_list).cumsum(0)), device=inp.q.device,
                          dtype=torch.int32)
        mx = max(inp.lengths_list)
        # Packing is done once, outside the timed region (favourable to this provider).
        qp = _pack(inp.q.detach(), inp.lengths_list).requires_grad_(inp.q.requires_grad)
        kps = [_pack(k.detach(), inp.lengths_list).requires_grad_(True) for k in inp.ks()]
        vps = [_pack(v.detach(), inp.lengths_list).requires_grad_(True) for v in inp.vs()]
        gp = _pack(inp.gates.detach(), inp.lengths_list)

        def varlen():
            outs = [varlen_attn(qp, k, v, cu, cu, mx, mx) for k, v in zip(kps, vps)]
            return torch.stack(outs, dim=1) * gp[..., None]
        varlen.packed = True
        varlen.leaves = [qp, *kps, *vps]
        return varlen
    if name == "flex":
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except ImportError as exc:
            raise Unavailable(f"FlexAttention is not in torch {torch.__version__} ({exc})")
        lens = inp.lengths

        def doc_mask(b, h, q_idx, kv_idx):
            return kv_idx < lens[b]
        block_mask = create_block_mask(doc_mask, B=inp.q.shape[0], H=None, Q_LEN=L, KV_LEN=L,
                                       device=inp.q.device)
        flex = torch.compile(flex_attention, dynamic=False)

        def flex_fn():
            q = inp.q.transpose(1, 2)
            outs = [flex(q, k.transpose(1, 2), v.transpose(1, 2), block_mask=block_mask).transpose(1, 2)
                    for k, v in zip(inp.ks(), inp.vs())]
            return torch.stack(outs, dim=2) * inp.gates[..., None]
        return flex_fn
    if name == "xformers":
        try:
            import xformers.ops as xops
            from xformers.ops.fmha.attn_bias import BlockDiagonalMask
        except Exception as exc:  # xformers fails to import in many ways (CUDA runtime mismatch)
            raise Unavailable(f"xformers does not import: {type(exc).__name__}: {exc}".splitlines()[0])
        bias = BlockDiagonalMask.from_seqlens(inp.lengths_list)
        qp = _pack(inp.q.detach(), inp.lengths_list)[None].requires_grad_(inp.q.requires_grad)
        kps = [_pack(k.detach(), inp.lengths_list)[None].requires_grad_(True) for k in inp.ks()]
        vps = [_pack(v.detach(), inp.lengths_list)[None].requires_grad_(True) for v in inp.vs()]
        gp = _pack(inp.gates.detach(), inp.lengths_list)

        def xf():
            outs = [xops.memory_efficient_attention(qp, k, v, attn_bias=bias)[0] for k, v in zip(kps, vps)]
            return torch.stack(outs, dim=1) * gp[..., None]
        xf.packed = True
        xf.leaves = [qp, *kps, *vps]
        return xf
    raise ValueError(f"unknown attention provider {name!r}; expected one of {ATTENTION_PROVIDERS}")


def attention_leaves(fn, inp: AttentionInputs):
    """The tensors whose gradients a provider's backward produces."""
    return getattr(fn, "leaves", [inp.q, inp.kv, inp.gates])


def reference_attention(inp: AttentionInputs) -> torch.Tensor:
    """The layer's attention in fp32. Long shapes go dialogue by dialogue through SDPA (the eager
    reference would materialise B x H x L x L scores: tens of GB at L = 8192)."""
    q, ks, vs, g = inp.q.float(), [k.float() for k in inp.ks()], [v.float() for v in inp.vs()], inp.gates.float()
    if q.shape[1] <= 1024:
        return cross_modal_attention_ref(q, ks, vs, inp.lengths, [inp.lengths] * inp.streams, gates=g)
    out = torch.zeros(q.shape[:2] + (inp.streams,) + q.shape[2:], device=q.device)
    with torch.no_grad():
        for b, n in enumerate(inp.lengths_list):
            for s in range(inp.streams):
                o = F.scaled_dot_product_attention(q[b:b + 1, :n].transpose(1, 2), ks[s][b:b + 1, :n].transpose(1, 2),
                                                   vs[s][b:b + 1, :n].transpose(1, 2))
                out[b, :n, s] = o[0].transpose(0, 1) * g[b, :n, s, :, None]
    return out


def check_attention(fn, inp: AttentionInputs, atol: float, rtol: float) -> None:
    """The provider's output on valid rows against the reference computed in fp32."""
    out = fn()
    L = inp.q.shape[1]
    if getattr(fn, "packed", False):
        out = _unpack(out, inp.lengths_list, L)
    ref = reference_attention(inp)
    valid = torch.arange(L, device=out.device)[None, :] < inp.lengths[:, None]
    err = (out.float()[valid] - ref[valid]).abs()
    bound = atol + rtol * ref[valid].abs()
    if not bool((err <= bound).all()):
        raise AssertionError(f"wrong result: max |diff| {err.max().item():.3g} (atol {atol}, rtol {rtol})")


# ---------------------------------------------------------------------- fusion
def fusion_inputs(n: int, d: int, dtype=torch.bfloat16, device="cuda", seed=0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device, dtype).requires_grad_(True)
    return {"e": mk(n, 3 * d), "weight": mk(2 * d, 3 * d, scale=(3 * d) ** -0.5), "bias": mk(2 * d),
            "mu": mk(3, n, d), "logvar": mk(3, n, d), "eps": torch.randn(n, d, generator=g).to(device, dtype),
            "rows": torch.ones(n, dtype=torch.bool, device=device)}


def fusion_provider(op: str, name: str, x: Dict[str, torch.Tensor]):
    """-> callable returning (z, kl). The noise is given (``eps``) so that providers agree."""
    if op == "variational_fusion":
        ref = lambda: variational_fusion_ref(x["e"], x["weight"], x["bias"], eps=x["eps"], row_mask=x["rows"])
        if name == "triton":
            from ..ops import variational_fusion
            return lambda: variational_fusion(x["e"], x["weight"], x["bias"], eps=x["eps"], row_mask=x["rows"])
    else:
        ref = lambda: poe_fusion_ref(x["mu"], x["logvar"], eps=x["eps"], row_mask=x["rows"])
        if name == "triton":
            from ..ops import poe_fusion
            return lambda: poe_fusion(x["mu"], x["logvar"], eps=x["eps"], row_mask=x["rows"])
    if name == "eager":
        return ref
    if name == "compile":
        fn = variational_fusion_ref if op == "variational_fusion" else poe_fusion_ref
        compiled = torch.compile(fn, dynamic=False)
        if op == "variational_fusion":
            return lambda: compiled(x["e"], x["weight"], x["bias"], eps=x["eps"], row_mask=x["rows"])
        return lambda: compiled(x["mu"], x["logvar"], eps=x["eps"], row_mask=x["rows"])
    raise ValueError(f"unknown fusion provider {name!r}; expected one of {FUSION_PROVIDERS}")


def fusion_gemms(x: Dict[str, torch.Tensor], mode: str) -> Callable[[], object]:
    """The Gaussian fusion's GEMMs alone, for ``mode`` (fwd: 1, bwd: 2, fwd+bwd: 3)."""
    e, w = x["e"].detach(), x["weight"].detach()
    dh = torch.randn(e.shape[0], w.shape[0], device=e.device, dtype=e.dtype)
    gemms = {"fwd": lambda: e @ w.t(),
             "bwd": lambda: (dh @ w, dh.t() @ e),
             "fwd+bwd": lambda: (e @ w.t(), dh @ w, dh.t() @ e)}
    return gemms[mode]


def fusion_leaves(op: str, x):
    return [x["e"], x["weight"], x["bias"]] if op == "variational_fusion" else [x["mu"], x["logvar"]]
