"""The CMATH model: its modules (the parameters) and its forward, computed through one
implementation chosen by ``backend``.

Forward: per modality, reconstruction U-Net -> code Z_m; embeddings H_m = Drop(Z_m + position +
speaker); one CMA-Transformer per central modality (the other two auxiliary) -> F_c; variational
fusion of the F_c -> H_f; fine heads on each F_c and the coarse head on H_f. The four stages
(encode, cma, fuse, heads) are the methods of an implementation (``cmath_fast.impl``): "torch"
runs the reference layers, "triton" the fused kernels, with the same modules and state_dict.
The loss (``cmath_fast.losses``) is one for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, Optional

import torch
import torch.nn as nn

from ._checks import _compiling, check_finite, check_index_range, check_lengths, check_tensor
from .backend import resolve_backend
from .components import format_fused, resolve_fused
from .config import MODALITIES, MODALITY_NAMES, CMATHConfig
from .impl import get_implementation
from .losses import beta_at
from .packing import PackedRows, pack_rows
from .profiling import nvtx_range
from .reference.layers import (CMALayer, CMATransformer, FineHead, ModalityProjection,
                               ModalityReconstruction, VariationalFusion, masked_mean, padding_mask)


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


@dataclass
class CMATHOutput:
    """What one forward pass returns.

    logits (B, L, C): the coarse head, the model's prediction; fine_logits[c] (B, L, C) per
    central; fine[c] (B, L, d) the fine-grained F_c; coarse (B, L, d) the fused H_f;
    mask (B, L) valid utterances; rec_loss a scalar; kl (B, L) per utterance and kl_loss its
    mean over the valid utterances (computed when first read: the fused loss reads kl itself).
    """

    logits: torch.Tensor
    fine_logits: Dict[str, torch.Tensor]
    fine: Dict[str, torch.Tensor]
    coarse: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    rec_loss: torch.Tensor
    kl: torch.Tensor
    extras: dict = field(default_factory=dict)

    @cached_property
    def kl_loss(self) -> torch.Tensor:
        return masked_mean(self.kl, self.mask)

    def predictions(self) -> torch.Tensor:
        return self.logits.argmax(dim=-1)


class PackedCMATHOutput(CMATHOutput):
    """A forward pass computed on packed rows, read in the padded layout: ``logits``,
    ``fine_logits`` and ``kl`` (unpacked together, one gather), ``fine`` and ``coarse`` are
    unpacked when first read, zero at padded positions. ``packed`` is the output in the packed
    layout ((1, N, ...) tensors, mask the valid rows), which the loss uses (a training step
    unpacks nothing); ``rows`` the layout."""

    def __init__(self, packed: CMATHOutput, rows: PackedRows, mask: torch.Tensor, lengths: torch.Tensor):
        self.packed, self.rows = packed, rows
        self.mask, self.lengths = mask, lengths
        self.rec_loss, self.extras = packed.rec_loss, packed.extras

    @cached_property
    def kl_loss(self) -> torch.Tensor:
        return self.packed.kl_loss

    @cached_property
    def _classes(self):
        p = self.packed
        names = list(p.fine_logits)
        stacked = torch.stack([p.logits[0]] + [p.fine_logits[c][0] for c in names])
        padded = self.rows.unpack_rows(stacked, self.mask)
        return padded[0], dict(zip(names, padded[1:].unbind(0)))

    @cached_property
    def logits(self) -> torch.Tensor:
        return self._classes[0]

    @cached_property
    def fine_logits(self) -> Dict[str, torch.Tensor]:
        return self._classes[1]

    @cached_property
    def kl(self) -> torch.Tensor:
        return self.rows.unpack_rows(self.packed.kl[0, :, None], self.mask)[..., 0]

    @cached_property
    def fine(self) -> Dict[str, torch.Tensor]:
        return {c: self.rows.unpack_rows(f[0], self.mask) for c, f in self.packed.fine.items()}

    @cached_property
    def coarse(self) -> torch.Tensor:
        return self.rows.unpack_rows(self.packed.coarse[0], self.mask)


class CMATH(nn.Module):
    """CMATH for multimodal emotion recognition in conversation.

    ``CMATH(CMATHConfig.iemocap(), backend="auto")(text, audio, visual, speakers, lengths)``.
    backend: "torch" (pure PyTorch), "triton" (fused kernels), "auto" (triton where it can run,
    else torch); the environment variable ``CMATH_FAST_BACKEND`` overrides it. The state_dict is
    the same whatever the backend, so checkpoints move between them. ``fused``: which of the triton
    backend's components run fused (``cmath_fast.components``: a subset of attention, fusion,
    unets, norms, loss, packing, as names or a comma-separated string; default all; the
    environment variable ``CMATH_FAST_FUSED`` overrides it); the others run the reference's code.
    """

    def __init__(self, cfg: CMATHConfig, backend: str = "auto", pack_rows: bool = True, fused=None):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.backend, self.backend_reason = resolve_backend(backend)
        self.impl = get_implementation(self.backend, cfg, resolve_fused(fused))
        # Packed rows (cmath_fast.packing) where the implementation supports them (the fused one).
        self.pack_rows = bool(pack_rows)
        d = cfg.d_model
        enc = ModalityReconstruction if cfg.reconstruction else ModalityProjection
        dims = cfg.feature_dims()
        self.encoders = nn.ModuleDict(
            {m: enc(dims[m], d, cfg.rec_kernel_size, cfg.dropout, cfg.rec_skip) for m in MODALITIES})
        # One extra speaker row for padded positions, kept at zero.
        self.speaker_embedding = nn.Embedding(cfg.num_speakers + 1, d, padding_idx=cfg.num_speakers)
        self.embed_dropout = nn.Dropout(cfg.dropout)
        if cfg.aux_self_attention:
            self.aux_encoders = nn.ModuleDict({m: CMALayer(cfg, num_streams=1) for m in MODALITIES})
        self.cma = nn.ModuleDict({c: CMATransformer(cfg, num_streams=3) for c in cfg.centrals})
        self.fusion = VariationalFusion(cfg)
        self.fine_heads = nn.ModuleDict(
            {c: FineHead(d, cfg.num_classes, cfg.dropout) for c in cfg.centrals})
        self.coarse_head = nn.Linear(d, cfg.num_classes)
        if cfg.class_weights is not None:
            self.register_buffer("class_weights", torch.tensor(cfg.class_weights, dtype=torch.float32))
        else:
            self.class_weights = None

    # ------------------------------------------------------------------ inputs
    def check_inputs(self, text, audio, visual, speakers, lengths) -> torch.Tensor:
        """Every input checked (a clear error naming it); returns the (B, L) mask of valid positions."""
        cfg = self.cfg
        feats = {"t": text, "a": audio, "v": visual}
        dims = cfg.feature_dims()
        B = L = None
        for m, x in feats.items():
            name = MODALITY_NAMES[m]
            check_tensor(name, x, ndim=3, floating=True)
            if x.shape[-1] != dims[m]:
                raise ValueError(
                    f"{name}: expected feature dim {dims[m]} (preset {cfg.name!r}), got {x.shape[-1]}; "
                    f"build the config with {name}_dim={x.shape[-1]} if your features differ")
            if B is None:
                B, L = x.shape[0], x.shape[1]
            elif x.shape[:2] != (B, L):
                raise ValueError(
                    f"{name}: expected batch and length (B, L) = {(B, L)} as text, got {tuple(x.shape[:2])}")
        if L == 0:
            raise ValueError("text: the batch has no utterance position (L = 0); give each dialogue at "
                             "least one utterance")
        weight_dtype = self.coarse_head.weight.dtype
        for m, x in feats.items():
            if x.dtype != text.dtype:
                raise TypeError(f"{MODALITY_NAMES[m]}: dtype {x.dtype}, but text is {text.dtype}; give the "
                                f"three modalities one dtype")
        if text.dtype != weight_dtype and not _autocast_enabled(text.device.type):
            raise TypeError(f"text, audio, visual: dtype {text.dtype}, but the model's weights are "
                            f"{weight_dtype}; convert the features (e.g. .to({weight_dtype})) or the model, "
                            f"or run under torch.autocast")
        check_lengths("lengths", lengths, B, L)
        check_tensor("speakers", speakers, ndim=2, integer=True)
        if tuple(speakers.shape) != (B, L):
            raise ValueError(f"speakers: expected shape {(B, L)}, got {tuple(speakers.shape)}")
        mask = padding_mask(lengths, L)
        check_index_range("speakers", speakers, mask, cfg.num_speakers)
        for m, x in feats.items():
            check_finite(MODALITY_NAMES[m], x, mask)
        return mask

    def set_feature_stats(self, stats: Dict[str, tuple]) -> None:
        """Store per-feature (mean, std) of the training split for the input standardisation."""
        for m, (mean, std) in stats.items():
            enc = self.encoders[m]
            mean = torch.as_tensor(mean, dtype=enc.feat_mean.dtype)
            std = torch.as_tensor(std, dtype=enc.feat_std.dtype).clamp_min(1e-6)
            if mean.shape != enc.feat_mean.shape or std.shape != enc.feat_std.shape:
                raise ValueError(
                    f"{MODALITY_NAMES[m]} stats: expected shape {tuple(enc.feat_mean.shape)}, "
                    f"got mean {tuple(mean.shape)} and std {tuple(std.shape)}")
            enc.feat_mean.copy_(mean)
            enc.feat_std.copy_(std)

    # ------------------------------------------------------------------ forward
    def packs(self, rows: Optional[PackedRows] = None) -> bool:
        """Whether a forward runs on packed rows: the implementation packs, ``pack_rows`` is on,
        and (unless the layout is given) the model is not being compiled (building a layout reads
        the lengths on the host)."""
        return self.impl.packs_rows and self.pack_rows and (rows is not None or not _compiling())

    def forward(self, text, audio, visual, speakers, lengths, *, eps: Optional[torch.Tensor] = None,
                rows: Optional[PackedRows] = None) -> CMATHOutput:
        """text (B, L, D_t), audio (B, L, D_a), visual (B, L, D_v) float, right-padded;
        speakers (B, L) int in [0, S); lengths (B,) int. ``eps`` (B, L, d_z): the fusion noise
        to use instead of a fresh draw (for exact comparisons). ``rows``: the packed layout of
        these lengths (``cmath_fast.packing.pack_rows``; built here when not given) for an
        implementation that packs; others ignore it."""
        mask = self.check_inputs(text, audio, visual, speakers, lengths)
        B, L, _ = text.shape
        feats = {"t": text, "a": audio, "v": visual}
        packed = self.packs(rows)
        if packed:
            if rows is None:
                rows = pack_rows(lengths, L)
            elif (rows.batch, rows.max_len) != (B, L):
                raise ValueError(f"rows: a layout of (B, L) = {(rows.batch, rows.max_len)}, but the batch is "
                                 f"{(B, L)}; build it with pack_rows(lengths, {L})")
            elif rows.index.device != text.device:
                raise ValueError(f"rows: on {rows.index.device}, the features on {text.device}; "
                                 f"move the layout with rows.to({str(text.device)!r})")
            # the features stay padded: the implementation packs them as it reads them
            speakers = rows.pack(speakers)[None]
            if eps is not None:
                eps = rows.pack(eps)[None]
            outer_mask, mask = mask, rows.valid[None]
        else:
            rows = None
        impl = self.impl
        hidden, rec = impl.encode(self, feats, speakers, mask, lengths, rows)
        with nvtx_range("cma/" + "".join(self.cfg.centrals)):
            fine = impl.cma(self, hidden, lengths, rows)
        with nvtx_range("fusion"):
            coarse, kl = impl.fuse(self, [fine[c] for c in self.cfg.centrals], mask, eps)
        with nvtx_range("heads"):
            logits, fine_logits = impl.heads(self, coarse, fine, mask, rows)
        out = CMATHOutput(logits=logits, fine_logits=fine_logits, fine=fine, coarse=coarse,
                          mask=mask, lengths=lengths, rec_loss=rec, kl=kl)
        return PackedCMATHOutput(out, rows, outer_mask, lengths) if packed else out

    # ------------------------------------------------------------------ loss
    def beta_at(self, epoch: Optional[int]) -> float:
        """beta warmed up linearly from 0 over ``beta_warmup_epochs`` (full beta when epoch is None)."""
        return beta_at(self.cfg, epoch)

    def loss(self, out: CMATHOutput, labels: torch.Tensor, epoch: Optional[int] = None,
             beta: Optional[torch.Tensor] = None):
        """Total loss and a dict of every term (detached); see ``cmath_fast.losses``. ``beta``: the
        KL weight as a tensor on the model's device (a captured CUDA graph reads it there), which
        replaces the warm-up schedule's value at ``epoch``."""
        check_tensor("labels", labels, ndim=2, integer=True)
        if labels.shape != out.mask.shape:
            raise ValueError(f"labels: expected shape {tuple(out.mask.shape)}, got {tuple(labels.shape)}")
        check_index_range("labels", labels, out.mask, self.cfg.num_classes)
        if isinstance(out, PackedCMATHOutput):  # the loss on the valid rows, where they were computed
            labels = out.rows.pack(labels)[None]
            out = out.packed
        with nvtx_range("loss"):
            return self.impl.loss(self.cfg, out, labels, self.class_weights, epoch, beta)

    @property
    def fused(self) -> str:
        """The components that run fused, as ``--fused`` takes them ("all", "none", or a list)."""
        return format_fused(self.impl.fused)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, fused={self.fused!r}"


__all__ = ["CMATH", "CMATHConfig", "CMATHOutput", "PackedCMATHOutput"]
