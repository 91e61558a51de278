"""A split's features held on the training device, each batch gathered there from its indices.

Collating a batch on the host and copying it moves the padded B x L features every step (about
21 MB at the iemocap preset's R1 batch, of which about 9 MB are valid rows), on the compute
stream. A split that fits on the device (IEMOCAP's training features are about 88 MB in fp32) is
copied there once (``DeviceDialogues``); a step then moves only its (B, L) utterance indices and
lengths (``IndexBatch``: a few kilobytes), and the features, speakers and labels are gathered on
the device — inside the captured graph, for a graphed step. The gathered batch is the same padded
``Batch`` the host would have collated, value for value: the model's inputs do not change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import MODALITIES
from ..packing import PackedRows, pack_rows
from .dataset import Batch, Dialogue, batch_indices

# A split is kept on a GPU when it takes at most this share of the device's free memory.
DEVICE_SHARE = 0.25


@dataclass
class IndexBatch:
    """A batch as indices into a ``DeviceDialogues``: idx (B, L) int64, each position's utterance
    row in the store (the store's zero row past a dialogue's length), lengths (B,), ids, and the
    packed layout (``with_rows``) when the model packs rows. ``gather(store)`` makes the ``Batch``."""

    idx: torch.Tensor
    lengths: torch.Tensor
    ids: List[object]
    pad_row: int
    rows: Optional[PackedRows] = None

    @property
    def shape(self) -> Tuple[int, int]:
        return tuple(self.idx.shape)

    def padded(self, B: int, L: int) -> "IndexBatch":
        """Padded to B dialogues of length L (extra positions point at the zero row), as
        ``Batch.padded``."""
        b, l = self.shape
        if (b, l) == (B, L):
            return self
        if B < b or L < l:
            raise ValueError(f"IndexBatch.padded: cannot pad a ({b}, {l}) batch to ({B}, {L})")
        idx = self.idx.new_full((B, L), self.pad_row)
        idx[:b, :l] = self.idx
        lengths = self.lengths.new_zeros(B)
        lengths[:b] = self.lengths
        out = IndexBatch(idx, lengths, self.ids, self.pad_row)
        return out.pin_memory() if self.lengths.is_pinned() else out

    def with_rows(self, n_rows: Optional[int] = None) -> "IndexBatch":
        rows = pack_rows(self.lengths, self.shape[1], n_rows)
        if self.lengths.is_pinned():
            rows = rows.pin_memory()
        return IndexBatch(self.idx, self.lengths, self.ids, self.pad_row, rows)

    def pin_memory(self) -> "IndexBatch":
        return IndexBatch(self.idx.pin_memory(), self.lengths.pin_memory(), self.ids, self.pad_row,
                          self.rows.pin_memory() if self.rows is not None else None)

    def to(self, device, feature_dtype=None) -> "IndexBatch":
        """The indices, lengths and layout on ``device`` (non-blocking from pinned memory);
        ``feature_dtype`` is the store's business."""
        def move(t):
            return t.to(device, non_blocking=t.is_pinned())
        return IndexBatch(move(self.idx), move(self.lengths), self.ids, self.pad_row,
                          self.rows.to(device, non_blocking=True) if self.rows is not None else None)

    def tensors(self):
        """The tensors a graph's static copy of this batch holds (``graphs._copy_into``)."""
        return (self.idx, self.lengths)

    def gather(self, store: "DeviceDialogues") -> Batch:
        """The padded batch, gathered on the store's device (five index kernels)."""
        flat = self.idx.reshape(-1)
        B, L = self.shape

        def take(t):
            return t.index_select(0, flat).view((B, L) + tuple(t.shape[1:]))
        return Batch(*(take(f) for f in store.features), take(store.speakers), self.lengths,
                     take(store.labels), self.ids, rows=self.rows)


class DeviceDialogues:
    """The dialogues' features (in ``dtype``), speakers and labels as (U + 1, ...) tensors on
    ``device``: utterances in dialogue order, then one zero row (speaker 0, label -1) that padding
    positions point at."""

    def __init__(self, dialogues: Sequence[Dialogue], device, dtype=torch.float32):
        self.dialogues = list(dialogues)
        lengths = np.array([len(d) for d in self.dialogues], dtype=np.int64)
        self.first = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.pad_row = int(self.first[-1])
        self.device = torch.device(device)

        def stack(arrays, dtype_, fill):
            rows = [np.asarray(a) for a in arrays if len(a)]
            tail = np.full((1,) + rows[0].shape[1:], fill, dtype=rows[0].dtype) if rows else np.zeros((1,))
            host = torch.from_numpy(np.concatenate(rows + [tail], axis=0) if rows else tail)
            return host.to(self.device, dtype=dtype_)
        self.features = [stack([d.feature(m) for d in self.dialogues], dtype, 0) for m in MODALITIES]
        self.speakers = stack([d.speakers for d in self.dialogues], torch.long, 0)
        self.labels = stack([d.labels for d in self.dialogues], torch.long, -1)

    @staticmethod
    def nbytes(dialogues: Sequence[Dialogue], dtype=torch.float32) -> int:
        """What the store of ``dialogues`` takes on the device."""
        size = torch.tensor([], dtype=dtype).element_size()
        rows = sum(len(d) for d in dialogues) + 1
        return rows * (sum(dialogues[0].feature(m).shape[1] for m in MODALITIES) * size + 16) if dialogues else 0

    def index_batch(self, chunk: Sequence[int], shape: Optional[Tuple[int, int]] = None) -> IndexBatch:
        """The IndexBatch of dialogues ``chunk`` (positions in this store), padded to ``shape``."""
        lengths = [int(self.first[i + 1] - self.first[i]) for i in chunk]
        B, L = len(chunk), max(max(lengths, default=1), 1)
        if shape is not None:
            if shape[0] < B or shape[1] < L:
                raise ValueError(f"index_batch: {B} dialogues of up to {L} utterances do not fit shape {shape}")
            B, L = shape
        idx = np.full((B, L), self.pad_row, dtype=np.int64)
        for b, (i, n) in enumerate(zip(chunk, lengths)):
            idx[b, :n] = np.arange(self.first[i], self.first[i] + n)
        lens = torch.zeros(B, dtype=torch.long)
        lens[:len(chunk)] = torch.tensor(lengths, dtype=torch.long)
        return IndexBatch(torch.from_numpy(idx), lens, [self.dialogues[i].id for i in chunk], self.pad_row)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                pin: bool = False, bucket: Optional[Callable[[int, int], Tuple[int, int]]] = None,
                group_by_length: bool = False) -> Iterator[IndexBatch]:
        """The batches ``iterate_batches`` would draw with the same arguments (the same dialogues in
        the same order, the generator consumed alike), as IndexBatches."""
        for chunk in batch_indices([len(d) for d in self.dialogues], batch_size, shuffle=shuffle,
                                   generator=generator, group_by_length=group_by_length):
            longest = max(len(self.dialogues[i]) for i in chunk)
            shape = bucket(len(chunk), longest) if bucket is not None else None
            batch = self.index_batch(chunk, shape)
            yield batch.pin_memory() if pin else batch


def keep_on_device(dialogues: Sequence[Dialogue], device, dtype, setting: str = "auto") -> Tuple[bool, str]:
    """(whether to hold ``dialogues`` on ``device``, why) for ``--device-data`` ``setting``: on, off,
    or auto — on a CPU always (the gather replaces collating), on a GPU when the store takes at most
    ``DEVICE_SHARE`` of its free memory."""
    if setting not in ("auto", "on", "off"):
        raise ValueError(f"--device-data: expected auto, on or off, got {setting!r}")
    if setting != "auto":
        return setting == "on", f"--device-data {setting}"
    need = DeviceDialogues.nbytes(dialogues, dtype)
    dev = torch.device(device)
    if dev.type != "cuda":
        return True, f"{dev.type}: the features are in host memory already"
    free, _ = torch.cuda.mem_get_info(dev)
    fits = need <= DEVICE_SHARE * free
    return fits, (f"the training features take {need / 2 ** 20:.0f} MiB, "
                  f"{'within' if fits else 'over'} a quarter of the GPU's {free / 2 ** 20:.0f} MiB free")
