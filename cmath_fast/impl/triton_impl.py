"""The fused implementation: the Triton ops of ``cmath_fast.ops`` and batched GEMMs, on the
reference modules.

- cma: the centrals are stacked on the batch axis. Per layer: one GEMM for every (stream,
  central) key/value projection, one for the queries, one for the gates, ONE attention launch for
  all C x S attentions, one GEMM for the output projections, the FFNs batched over the centrals.
  The auxiliary self-attention (``aux_self_attention``) is the same stacked layer over the three
  modalities with one stream each.
- fuse: the reference VariationalFusion's forward with the fused latent ops.
- heads: the fine heads batched over the centrals.
- encode: the U-Net on the row-major layout — each Conv1d a ``row_conv`` (bias, GELU and the
  padding mask fused; no channel-first transposes) — then the reference embeddings.
Every hyper-parameter (activation, dropout rates and training flags, norm eps, layer count,
gating, joint softmax) is read from the modules or the config.

Each component (``cmath_fast.components``: attention, fusion, unets, norms, loss, packing) can be
switched off; it then runs the reference's code (``unfused``, the reference modules) in the same
place, so that one component failing on a GPU does not take the others down.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch

from .._checks import _compiling
from ..config import MODALITIES
from ..losses import StackedDict, stack_values
from ..ops import cross_modal_attention_packed, poe_fusion, variational_fusion
from ..ops._common import autocast_inputs
from ..ops.cross_modal_attention import MAX_HEAD_DIM
from ..ops.loss import cmath_loss_fused
from ..ops.reconstruction import reconstruction_loss, standardise_rows
from ..ops.row_conv import dialogue_rows, row_conv_groups
from ..reference.layers import CMALayer, ModalityProjection, padding_mask, sinusoidal_positions, stream_order
from .batched import batched_linear, dropout, kv_projection, stacked_layer_norm
from .torch_impl import TorchImplementation
from .unfused import attention_ref, layer_norm_each


# (width, device, dtype) -> the position tables made so far, the last the longest. Every table is
# kept: a captured CUDA graph reads the one it was captured with by address, so none may be freed
# (an LRU cache evicting it would hand the graph freed memory). Capacities grow by powers of two,
# so all of them together hold less than twice the longest.
_POSITION_TABLES: Dict[tuple, List[torch.Tensor]] = {}


def _positions(L: int, d: int, device, dtype) -> torch.Tensor:
    """The sinusoidal position table's first L rows, from a table made once per (width, device,
    dtype) and capacity: the reference recomputes it (eight launches) every forward. Under
    torch.compile it is traced (Inductor folds it), not cached."""
    if _compiling():
        return sinusoidal_positions(L, d, device=device, dtype=dtype)
    tables = _POSITION_TABLES.setdefault((d, str(device), dtype), [])
    if not tables or tables[-1].shape[0] < L:
        capacity = max(128, 1 << max(0, int(L) - 1).bit_length())
        tables.append(sinusoidal_positions(capacity, d, device=device, dtype=dtype))
    return tables[-1][:L]


def _stacked_dict(names, stacked: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{name: slice} that also carries the stacked tensor (no re-stacking downstream); a plain
    dict while compiling (what torch.compile traces best)."""
    if _compiling():
        return dict(zip(names, stacked.unbind(0)))
    return StackedDict(names, stacked)


def _hyper_parameters(layer: CMALayer) -> tuple:
    a, f = layer.attn, layer.ffn
    return (a.num_streams, a.num_heads, a.gated, a.joint, a.attn_dropout, a.training, f.activation,
            f.dropout.p, f.dropout.training, layer.dropout.p, layer.dropout.training)


def cma_layer_stacked(layers: Sequence[CMALayer], x: torch.Tensor, aux: Sequence[torch.Tensor],
                      lengths: torch.Tensor, rows=None, attention=cross_modal_attention_packed,
                      stacked_layer_norm=stacked_layer_norm) -> torch.Tensor:
    """C CMA layers of the same shape, layer i applied to x[i]: x (C, B, L, d) central states,
    aux S-1 tensors (C, B, L, d) of auxiliary streams, lengths (C*B,) -> the new x (C, B, L, d).
    Same math as ``layers[i](x[i], [a[i] for a in aux], lengths)``. Packed rows: x and aux
    (C, 1, N, d) and ``rows`` the C copies' row starts (``PackedRows.stacked(C)``). ``attention``
    and ``stacked_layer_norm``: the fused ops, or their references (``unfused``)."""
    hp = {_hyper_parameters(layer) for layer in layers}
    if len(hp) != 1:
        raise ValueError(f"cma_layer_stacked: the stacked layers differ in hyper-parameters: {sorted(hp)}")
    C, B, L, d = x.shape
    lead = (C * B, L) if rows is None else (C * B * L,)
    attn = [layer.attn for layer in layers]
    first = attn[0]
    S, H, dh = first.num_streams, first.num_heads, first.head_dim
    xn = stacked_layer_norm(x, [a.norm_q for a in attn])
    streams = [xn] + [stacked_layer_norm(aux[s - 1], [a.norm_kv[s - 1] for a in attn]) for s in range(1, S)]
    # (S*C, B*L, d) @ (S*C, d, 2d): stream-major so that each stream's k (and v) over the stacked
    # batch C*B is one equally strided view.
    inp = torch.stack(streams).view(S * C, B * L, d)
    kv = kv_projection(inp, attn, S).view((S,) + lead + (2, H, dh))
    xn_rows = xn.view(C, B * L, d)
    q = batched_linear(xn_rows, [a.w_q for a in attn]).view(lead + (H, dh))
    gates = None
    if first.gated:
        g = torch.sigmoid(batched_linear(xn_rows, [a.w_g for a in attn])).view(lead + (S - 1, H))
        gates = torch.cat([torch.ones_like(g[..., :1, :]), g], dim=-2)
    p = first.attn_dropout if first.training else 0.0
    o = attention(q, kv, lengths, gates=gates, dropout_p=p, joint=first.joint, rows=rows)
    o = batched_linear(o.view(C, B * L, S * d), [a.w_o for a in attn]).view(C, B, L, d)
    x = x + dropout(o, layers[0].dropout)
    ffns = [layer.ffn for layer in layers]
    h = stacked_layer_norm(x, [f.norm for f in ffns]).view(C, B * L, d)
    h = dropout(ffns[0].act(batched_linear(h, [f.fc1 for f in ffns])), ffns[0].dropout)
    h = batched_linear(h, [f.fc2 for f in ffns]).view(C, B, L, d)
    return x + dropout(h, layers[0].dropout)


class TritonImplementation(TorchImplementation):
    name = "triton"

    def __init__(self, fused=("attention", "fusion", "unets", "norms", "loss", "packing")):
        self.fused = frozenset(fused)

    @property
    def packs_rows(self) -> bool:
        return "packing" in self.fused

    def _layer_ops(self) -> dict:
        """The attention and LayerNorm that the CMA layers run: fused, or the reference's."""
        return dict(attention=cross_modal_attention_packed if "attention" in self.fused else attention_ref,
                    stacked_layer_norm=stacked_layer_norm if "norms" in self.fused else layer_norm_each)

    def not_supported_reasons(self, cfg) -> List[str]:
        reasons = []
        if cfg.head_dim > MAX_HEAD_DIM:
            reasons.append(f"head dim {cfg.head_dim} (d_model {cfg.d_model} / {cfg.num_heads} heads) "
                           f"exceeds the attention kernel's {MAX_HEAD_DIM}")
        return reasons

    def row_layout(self, mask, lengths, rows=None):
        """Each row's position in its dialogue and that dialogue's length, (N,) int32 each."""
        if rows is not None:
            return rows.pos, rows.lens
        return dialogue_rows(lengths, mask.shape[1])

    def embed(self, model, codes, speakers, mask, dtype, rows=None):
        """The three modalities at once: stacked codes, cached positions (gathered per row when
        packed), one speaker lookup, one dropout draw."""
        B, L = mask.shape
        names = list(codes)
        spk = model.speaker_embedding(torch.where(mask, speakers.long(), model.cfg.num_speakers))
        if rows is None:
            pos = _positions(L, model.cfg.d_model, mask.device, dtype)
        else:
            pos = _positions(rows.max_len, model.cfg.d_model, mask.device, dtype).index_select(0, rows.pos)
        base = pos + spk
        h = dropout(stack_values(codes) + base, model.embed_dropout)
        return _stacked_dict(names, h)

    def reconstruction(self, model, feats, mask, lengths, rows=None):
        """The three U-Nets at once (``unets``). ``feats`` are padded (B, L, D_m) in either layout:
        with packed rows the standardisation gathers the valid rows. With the fused U-Nets off
        (or the ablation without U-Nets) the reference modules run on the padded features, and
        their codes are packed."""
        encs = [model.encoders[m] for m in MODALITIES]
        if "unets" in self.fused and not any(isinstance(e, ModalityProjection) for e in encs):
            return self.unets(encs, feats, mask, lengths, rows)
        if rows is None:
            return super().reconstruction(model, feats, mask, lengths)
        codes, rec = super().reconstruction(model, feats, padding_mask(lengths, rows.max_len), lengths)
        return {m: rows.pack(z)[None] for m, z in codes.items()}, rec

    def unets(self, encs, feats, mask, lengths, rows=None):
        """The reference U-Nets' math for the three modalities on rows: each layer one
        ``row_conv_groups`` launch for the three (same Conv1d parameters, read in place), the
        skip connection read as the last layer's second input (no concatenation), the input
        standardisation and packing one launch, L_rec from the last layer's epilogue and one
        launch. -> ({m: Z_m}, L_rec)."""
        if len({e.skip for e in encs}) != 1:
            raise ValueError("the fused U-Nets need one skip setting for the three modalities")
        pos, lens = self.row_layout(mask, lengths, rows)
        xs = [feats[m].reshape(-1, feats[m].shape[-1]) for m in MODALITIES]
        x_std = standardise_rows(xs, [e.feat_mean for e in encs], [e.feat_std for e in encs], pos, lens,
                                 rows.index if rows is not None else None)

        def conv(name, h, act, **kw):
            layers = [getattr(e, name) for e in encs]
            return row_conv_groups(h, [c.weight for c in layers], [c.bias for c in layers], pos, lens,
                                   activation=act, **kw)
        skip = conv("enc1", autocast_inputs(x_std)[0], "gelu")
        drops = {(e.dropout.p, e.dropout.training) for e in encs}
        h = dropout(skip, encs[0].dropout) if len(drops) == 1 else \
            torch.stack([dropout(s, e.dropout) for s, e in zip(skip, encs)])
        z = conv("enc2", h, "gelu")
        u = conv("dec1", z, "gelu")
        x_hat, part = conv("dec2", u, None, xb=skip if encs[0].skip else None, ref=x_std)
        rec = reconstruction_loss(x_hat, x_std, part, pos, lens, [x.shape[-1] for x in xs])
        codes = z.view((len(encs),) + tuple(mask.shape) + (z.shape[-1],))
        return _stacked_dict(list(MODALITIES), codes), rec

    def self_attention(self, layers, hidden: Dict[str, torch.Tensor], lengths, rows=None) -> Dict[str, torch.Tensor]:
        names = [m for m in MODALITIES if m in hidden]
        x = torch.stack([hidden[m] for m in names])
        out = cma_layer_stacked([layers[m] for m in names], x, [], lengths.repeat(len(names)),
                                rows.stacked(len(names)) if rows is not None else None, **self._layer_ops())
        return _stacked_dict(names, out)

    def cma(self, model, hidden, lengths, rows=None):
        centrals = model.cfg.centrals
        C = len(centrals)
        # (C, B, L, d): the embeddings' own stack when the centrals are its modalities in order
        x = stack_values(hidden) if list(hidden) == list(centrals) else torch.stack([hidden[c] for c in centrals])
        S = len(stream_order(centrals[0]))
        aux = [torch.stack([hidden[stream_order(c)[s]] for c in centrals]) for s in range(1, S)]
        lens = lengths.repeat(C)
        stacks = [model.cma[c] for c in centrals]
        stacked = rows.stacked(C) if rows is not None else None
        ops = self._layer_ops()
        for li in range(len(stacks[0].layers)):
            x = cma_layer_stacked([t.layers[li] for t in stacks], x, aux, lens, stacked, **ops)
        out = ops["stacked_layer_norm"](x, [t.norm for t in stacks])
        return _stacked_dict(centrals, out)

    def fuse(self, model, fine, mask, eps):
        if "fusion" not in self.fused:
            return super().fuse(model, fine, mask, eps)
        return model.fusion(fine, mask, eps, gaussian=variational_fusion, poe=poe_fusion)

    def loss(self, cfg, out, labels, class_weights, epoch=None, beta=None):
        """The whole loss in one fused op each way (``ops.loss.cmath_loss_fused``)."""
        if "loss" not in self.fused:
            return super().loss(cfg, out, labels, class_weights, epoch, beta)
        return cmath_loss_fused(cfg, out, labels, class_weights, epoch, beta)

    def heads(self, model, coarse, fine, mask, rows=None):
        """The fine heads in one batched GEMM. Packed rows are not masked: the loss and the
        unpacking read only the valid rows."""
        C = len(fine)
        B, L, d = coarse.shape
        heads = [model.fine_heads[c] for c in fine]
        h = stack_values(fine).view(C, B * L, d)
        h = dropout(heads[0].act(h), heads[0].dropout)
        stacked = batched_linear(h, [hd.proj for hd in heads]).view(C, B, L, -1)
        logits = model.coarse_head(coarse)
        if rows is None:
            m = mask[..., None].to(coarse.dtype)
            logits, stacked = logits * m, stacked * m
        return logits, _stacked_dict(list(fine), stacked)
