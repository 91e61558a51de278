"""Fused CMA attention: drop-in subclasses of the reference layers (identical state_dict), and the
stacked path that runs every central's layer at once, so that one kernel launch computes all
C x S attentions of a CMATH layer."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from ..ops.cross_modal_attention import cross_modal_attention_packed
from ..reference.layers import CMATransformer, CrossModalAttention, stream_order


class BatchedLinearFunction(torch.autograd.Function):
    """y = x W^T + b for C linears at once: x (C, N, d_in), W (C, d_out, d_in), b (C, d_out).
    Its backward produces dW in W's own layout (dy^T x), so the gradients that flow back to the
    individual nn.Linear weights need no layout copy."""

    @staticmethod
    def forward(ctx, x, w, b):
        ctx.save_for_backward(x, w)
        return torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, dy):
        x, w = ctx.saved_tensors
        dx = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        db = dy.sum(1) if ctx.needs_input_grad[2] else None
        return dx, dw, db


def _linear(x: torch.Tensor, linears) -> torch.Tensor:
    """x (C, N, d_in) through C nn.Linear -> (C, N, d_out), one batched GEMM."""
    w = torch.stack([lin.weight for lin in linears])
    b = torch.stack([lin.bias for lin in linears])
    return BatchedLinearFunction.apply(x, w, b)


def _kv_projection(inp: torch.Tensor, attns, S: int) -> torch.Tensor:
    """Every (stream, module) key/value projection in one GEMM: inp (S*C, N, d), stream-major ->
    (S*C, N, 2d) with [k | v] on the last axis."""
    w = torch.cat([torch.stack([a.w_k[s].weight for s in range(S) for a in attns]),
                   torch.stack([a.w_v[s].weight for s in range(S) for a in attns])], dim=1)
    b = torch.cat([torch.stack([a.w_k[s].bias for s in range(S) for a in attns]),
                   torch.stack([a.w_v[s].bias for s in range(S) for a in attns])], dim=1)
    return BatchedLinearFunction.apply(inp, w, b)


class FusedCrossModalAttention(CrossModalAttention):
    """CrossModalAttention with the fused kernel; the streams' key/value projections come from one
    batched GEMM, already in the packed layout the kernel reads (no copy)."""

    def forward(self, x: torch.Tensor, aux: Sequence[torch.Tensor], lengths: torch.Tensor):
        B, L, d = x.shape
        S, H, dh = self.num_streams, self.num_heads, self.head_dim
        xn = self.norm_q(x)
        streams = torch.stack([xn] + [norm(h) for norm, h in zip(self.norm_kv, aux)])  # (S, B, L, d)
        kv = _kv_projection(streams.view(S, B * L, d), [self], S).view(S, B, L, 2, H, dh)
        q = self.w_q(xn).view(B, L, H, dh)
        p = self.attn_dropout if self.training else 0.0
        o = cross_modal_attention_packed(q, kv, lengths, gates=self.gates(xn), dropout_p=p)
        return self.w_o(o.view(B, L, S * d))


def _layer_norm(x: torch.Tensor, norms) -> torch.Tensor:
    """LayerNorm of x (C, ..., d) with the C norms' own affine parameters."""
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    y = F.layer_norm(x, x.shape[-1:], eps=norms[0].eps)
    w = torch.stack([n.weight for n in norms]).view(shape)
    b = torch.stack([n.bias for n in norms]).view(shape)
    return torch.addcmul(b, y, w)


def stacked_cma(cmas: Dict[str, CMATransformer], hidden: Dict[str, torch.Tensor], lengths: torch.Tensor,
                centrals: Sequence[str], training: bool) -> Dict[str, torch.Tensor]:
    """All CMA-Transformers at once: the centrals stacked on the batch axis. Per layer: one GEMM
    for every (stream, central) key/value projection, one for the queries, one for the gates,
    ONE attention launch for all C x S attentions, one GEMM for the output projections, and the
    FFNs batched over the centrals. Same math as running each ``cmas[c]`` on its own."""
    C = len(centrals)
    B, L, d = hidden[centrals[0]].shape
    first = cmas[centrals[0]].layers[0].attn
    S, H, dh = first.num_streams, first.num_heads, first.head_dim
    x = torch.stack([hidden[c] for c in centrals])  # (C, B, L, d)
    aux = [torch.stack([hidden[stream_order(c)[s]] for c in centrals]) for s in range(1, S)]
    lens = lengths.repeat(C)
    for li in range(len(cmas[centrals[0]].layers)):
        layers = [cmas[c].layers[li] for c in centrals]
        attn = [layer.attn for layer in layers]
        xn = _layer_norm(x, [a.norm_q for a in attn])
        streams = [xn] + [_layer_norm(aux[s - 1], [a.norm_kv[s - 1] for a in attn]) for s in range(1, S)]
        # (S*C, B*L, d) @ (S*C, d, 2d): stream-major so that each stream's k (and v) over the
        # stacked batch C*B is one equally strided view.
        inp = torch.stack(streams).view(S * C, B * L, d)
        kv = _kv_projection(inp, attn, S).view(S, C * B, L, 2, H, dh)
        q = _linear(xn.view(C, B * L, d), [a.w_q for a in attn]).view(C * B, L, H, dh)
        gates = None
        if first.gated:
            g = torch.sigmoid(_linear(xn.view(C, B * L, d), [a.w_g for a in attn]))
            g = g.view(C * B, L, S - 1, H)
            gates = torch.cat([torch.ones_like(g[:, :, :1]), g], dim=2)
        p = first.attn_dropout if training else 0.0
        o = cross_modal_attention_packed(q, kv, lens, gates=gates, dropout_p=p)
        o = _linear(o.view(C, B * L, S * d), [a.w_o for a in attn]).view(C, B, L, d)
        drop = layers[0].dropout.p if training else 0.0
        x = x + F.dropout(o, drop, training)
        ffns = [layer.ffn for layer in layers]
        h = _layer_norm(x, [f.norm for f in ffns]).view(C, B * L, d)
        h = F.dropout(F.gelu(_linear(h, [f.fc1 for f in ffns])), ffns[0].dropout.p if training else 0.0, training)
        h = _linear(h, [f.fc2 for f in ffns]).view(C, B, L, d)
        x = x + F.dropout(h, drop, training)
    out = _layer_norm(x, [cmas[c].norm for c in centrals])
    return {c: out[i] for i, c in enumerate(centrals)}


def fuse_attention_layers(module: torch.nn.Module) -> List[str]:
    """Turn every CrossModalAttention inside ``module`` into a FusedCrossModalAttention in place
    (same parameters and buffers, so the state_dict is unchanged). Returns the names converted."""
    names = []
    for name, m in module.named_modules():
        if type(m) is CrossModalAttention:
            m.__class__ = FusedCrossModalAttention
            names.append(name)
    return names
