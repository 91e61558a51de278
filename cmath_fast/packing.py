"""Packed rows: the fused model's per-utterance layers run on the valid utterances only.

A batch arrives padded, B dialogues x L positions. Packed, dialogue b owns the consecutive rows
``starts[b]`` to ``starts[b + 1]``: its ``lengths[b]`` utterances, then any padding rows the
layout gave it (a static row count for CUDA graphs: ``rows`` > sum(lengths)). Every extent stays
within L, so padding rows sit inside some dialogue's padded span and the attention kernels write
them as zeros; the row-wise layers see them masked. Attention and the U-Net's convolution read
only a dialogue's own rows (``starts``; each row's position and dialogue length).

Built on the host from host lengths (the data loader has them): nothing in a step reads the
device to learn the layout. ``pack_rows(lengths, L)`` on device lengths reads them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

# The attention kernels read the row starts of up to this many stacked copies of the batch (the
# centrals, or the three modalities), as a prefix of one array.
MAX_COPIES = 3


@dataclass(frozen=True)
class PackedRows:
    """The packed layout of a (B, L) batch in N rows.

    index (N,) long: the padded position b * L + i each row comes from; valid (N,) bool: the row
    is an utterance; pos, lens (N,) int32: its position in its dialogue and that dialogue's
    length; starts (MAX_COPIES * B + 1,) int32: each dialogue's first row in MAX_COPIES stacked
    copies of the N rows, N per copy (``starts_for(C)`` is the prefix for C copies); unpack
    (B * L,) long: the row of each padded position (0 past a dialogue's extent: mask it).
    batch B, max_len L and n_rows N are host integers."""

    index: torch.Tensor
    valid: torch.Tensor
    pos: torch.Tensor
    lens: torch.Tensor
    starts: torch.Tensor
    unpack: torch.Tensor
    batch: int
    max_len: int
    n_rows: int

    def starts_for(self, copies: int) -> torch.Tensor:
        """The (copies * B + 1,) row starts of ``copies`` stacked copies of the rows."""
        if not 1 <= copies <= MAX_COPIES:
            raise ValueError(f"starts_for: copies must be in [1, {MAX_COPIES}], got {copies}")
        return self.starts[: copies * self.batch + 1]

    def stacked(self, copies: int) -> "_Stacked":
        return _Stacked(self.starts_for(copies), self.max_len)

    def tensors(self):
        return (self.index, self.valid, self.pos, self.lens, self.starts, self.unpack)

    def to(self, device, non_blocking: bool = False) -> "PackedRows":
        moved = [t.to(device, non_blocking=non_blocking and t.is_pinned()) for t in self.tensors()]
        return PackedRows(*moved, batch=self.batch, max_len=self.max_len, n_rows=self.n_rows)

    def pin_memory(self) -> "PackedRows":
        return PackedRows(*(t.pin_memory() for t in self.tensors()), batch=self.batch,
                          max_len=self.max_len, n_rows=self.n_rows)

    def copy_(self, other: "PackedRows") -> None:
        """Copy ``other`` (same B, L and N) into these tensors in place (a graph's static inputs)."""
        if (other.batch, other.max_len, other.n_rows) != (self.batch, self.max_len, self.n_rows):
            raise ValueError(f"PackedRows.copy_: layout (B, L, N) {(other.batch, other.max_len, other.n_rows)} "
                             f"!= {(self.batch, self.max_len, self.n_rows)}")
        for dst, src in zip(self.tensors(), other.tensors()):
            dst.copy_(src, non_blocking=True)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) padded -> (N, ...) rows."""
        return x.reshape((self.batch * self.max_len,) + tuple(x.shape[2:])).index_select(0, self.index)

    def unpack_rows(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(..., N, F) rows -> (..., B, L, F) padded, zero at padded positions (``mask`` (B, L))."""
        lead = tuple(x.shape[:-2])
        out = x.index_select(-2, self.unpack).view(lead + (self.batch, self.max_len, x.shape[-1]))
        return out * mask[..., None].to(out.dtype)


class _Stacked:
    """What the attention op reads of a layout: row starts and the longest extent."""

    __slots__ = ("starts", "max_len")

    def __init__(self, starts: torch.Tensor, max_len: int):
        self.starts = starts
        self.max_len = max_len


def pack_rows(lengths: torch.Tensor, max_len: int, rows: Optional[int] = None) -> PackedRows:
    """The packed layout of a batch with these lengths (B,) padded to ``max_len``, on the lengths'
    device (built on the host; device lengths are read once). ``rows``: the row count, at least
    sum(lengths) and at most B * max_len (default sum(lengths), at least 1); the extra rows are
    padding, given to the dialogues from the last one back."""
    lens_host = lengths.detach().to("cpu", torch.int64)
    if lens_host.ndim != 1:
        raise ValueError(f"pack_rows: lengths must be (B,), got shape {tuple(lengths.shape)}")
    B = lens_host.shape[0]
    total = int(lens_host.sum())
    if lens_host.numel() and (int(lens_host.min()) < 0 or int(lens_host.max()) > max_len):
        raise ValueError(f"pack_rows: lengths must lie in [0, {max_len}], got {lens_host.tolist()}")
    n = max(total, 1) if rows is None else int(rows)
    if not total <= n <= B * max_len or n < 1:
        raise ValueError(f"pack_rows: rows must lie in [max(sum(lengths), 1) = {max(total, 1)}, "
                         f"B * L = {B * max_len}], got {n}")
    ext = lens_host.clone()
    extra = n - total
    for b in range(B - 1, -1, -1):  # padding rows go to the last dialogues first
        if extra == 0:
            break
        give = min(extra, max_len - int(ext[b]))
        ext[b] += give
        extra -= give
    starts = torch.zeros(B + 1, dtype=torch.int64)
    starts[1:] = torch.cumsum(ext, 0)
    # numpy's repeat: torch's CPU repeat_interleave costs milliseconds when other threads are busy
    dialogue = torch.from_numpy(np.repeat(np.arange(B, dtype=np.int64), ext.numpy()))
    pos = torch.arange(n) - starts[:-1][dialogue]
    index = dialogue * max_len + pos
    lens = lens_host[dialogue]
    unpack = torch.zeros(B * max_len, dtype=torch.int64)
    unpack[index] = torch.arange(n)
    copies = torch.cat([starts[:-1] + c * n for c in range(MAX_COPIES)] + [torch.tensor([MAX_COPIES * n])])
    device = lengths.device
    return PackedRows(index.to(device), (pos < lens).to(device), pos.to(device, torch.int32),
                      lens.to(device, torch.int32), copies.to(device, torch.int32), unpack.to(device),
                      batch=B, max_len=int(max_len), n_rows=n)


def row_bucket(n: int, capacity: int) -> int:
    """The static row count of a CUDA graph for n valid rows: n rounded up to a multiple of a
    sixteenth of the next power of two (at most 12.5 % extra) and of 32, and at most ``capacity``
    (B * L, the padded layout's rows)."""
    n = max(int(n), 1)
    step = max(32, 1 << max(0, (n - 1).bit_length() - 4))
    return min(-(-n // step) * step, int(capacity))


__all__ = ["PackedRows", "pack_rows", "row_bucket", "MAX_COPIES"]
