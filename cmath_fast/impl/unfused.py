"""The reference's code for a fused component that is switched off (``cmath_fast.components``), in
the fused implementation's stacked layouts: same modules, same math as the reference layers."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..reference.functional import cross_modal_attention_ref


def layer_norm_each(x: torch.Tensor, norms: Sequence[nn.LayerNorm]) -> torch.Tensor:
    """x (C, ..., d) -> each slice through its own nn.LayerNorm (what the reference layers run)."""
    return torch.stack([norm(x[i]) for i, norm in enumerate(norms)])


def attention_ref(q: torch.Tensor, kv: torch.Tensor, lengths: torch.Tensor, *, gates=None, dropout_p: float = 0.0,
                  joint: bool = False, rows=None) -> torch.Tensor:
    """``ops.cross_modal_attention_packed``'s contract computed by ``cross_modal_attention_ref``:
    q (B, L, H, dh), kv (S, B, L, 2, H, dh), gates (B, L, S, H) -> (B, L, S, H, dh); on packed rows
    (``rows``: row starts and max_len) q (N, H, dh), kv (S, N, 2, H, dh), gates (N, S, H) ->
    (N, S, H, dh). Packed rows are gathered into the padded layout (each dialogue's first
    ``lengths[b]`` rows), attended, and scattered back; padding rows get zeros, as the kernel
    writes them. Attention dropout draws the reference layer's Bernoulli masks."""
    S, n_rows = kv.shape[0], q.shape[0]
    src = valid = None
    if rows is not None:
        ar = torch.arange(int(rows.max_len), device=q.device)
        valid = ar[None, :] < lengths[:, None].to(q.device)
        src = torch.where(valid, rows.starts[:-1, None].long() + ar[None, :], 0)  # (B, L) row of each position
        q, kv = q[src], kv[:, src]
        gates = gates[src] if gates is not None else None
    B, L, H, _ = q.shape
    masks = None
    if dropout_p > 0:
        keep = 1.0 - dropout_p
        masks = [torch.bernoulli(torch.full((B, H, L, L), keep, device=q.device)).to(q.dtype) / keep
                 for _ in range(S)]
    out = cross_modal_attention_ref(q, [kv[s, :, :, 0] for s in range(S)], [kv[s, :, :, 1] for s in range(S)],
                                    lengths, [lengths] * S, gates=gates, dropout_mask=masks, joint=joint)
    if rows is None:
        return out
    # padded positions go to one extra row, dropped after (no boolean indexing: no host sync, so
    # a CUDA graph can capture it)
    dest = torch.where(valid, src, n_rows).flatten()
    packed = out.new_zeros((n_rows + 1,) + tuple(out.shape[2:])).index_put((dest,), out.flatten(0, 1))
    return packed[:n_rows]
