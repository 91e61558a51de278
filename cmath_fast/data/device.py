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

    def own_rows(self):
        """The rows this batch's indices point into when it carries them (``StagedBatch``)."""
        return None

    def key(self) -> tuple:
        """What a captured graph of this batch is specific to besides its shape."""
        return ()

    def gather(self, store: "DeviceDialogues") -> Batch:
        """The padded batch, gathered on the store's device (five index kernels)."""
        store = self.own_rows() or store
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


class _Rows:
    """Rows of features, speakers and labels that indices point into (a ``DeviceDialogues``'s
    layout: ``features``, ``speakers``, ``labels``)."""

    def __init__(self, features, speakers, labels):
        self.features, self.speakers, self.labels = list(features), speakers, labels

    def tensors(self):
        return (*self.features, self.speakers, self.labels)

    def to(self, device, non_blocking=False):
        return _Rows(*(([t.to(device, non_blocking=non_blocking) for t in self.features],) +
                       tuple(t.to(device, non_blocking=non_blocking) for t in (self.speakers, self.labels))))


@dataclass
class StagedBatch(IndexBatch):
    """An ``IndexBatch`` that carries the rows its indices point into: the batch's valid utterances
    only (then one zero row), staged on the host in a reused pinned buffer (``StagedDialogues``).
    A graph's static copy holds device rows of the same capacity; a step copies its rows and indices
    into them (``graphs._copy_into``) and gathers the padded batch inside the graph."""

    rows_store: Optional[_Rows] = None
    slot: Optional[object] = None  # the staging slot whose buffers rows_store views (its event)

    def own_rows(self):
        return self.rows_store

    def key(self) -> tuple:
        return (self.rows_store.speakers.shape[0],)

    def tensors(self):
        return (self.idx, self.lengths, *self.rows_store.tensors())

    def _with(self, **kw):
        base = dict(idx=self.idx, lengths=self.lengths, ids=self.ids, pad_row=self.pad_row, rows=self.rows,
                    rows_store=self.rows_store, slot=self.slot)
        base.update(kw)
        return StagedBatch(**base)

    def padded(self, B: int, L: int) -> "StagedBatch":
        p = IndexBatch.padded(self, B, L)
        return self._with(idx=p.idx, lengths=p.lengths, rows=None)

    def with_rows(self, n_rows=None) -> "StagedBatch":
        return self._with(rows=IndexBatch.with_rows(self, n_rows).rows)

    def pin_memory(self) -> "StagedBatch":
        p = IndexBatch.pin_memory(self)
        return self._with(idx=p.idx, lengths=p.lengths, rows=p.rows)

    def to(self, device, feature_dtype=None) -> "StagedBatch":
        """On ``device`` (the eager path, and a graph's static copy): the copies from the pinned slot
        are issued, and the slot's event recorded after them so that it is not refilled before."""
        moved = IndexBatch.to(self, device)
        rows = self.rows_store.to(device, non_blocking=self.lengths.is_pinned())
        self.copied()
        return self._with(idx=moved.idx, lengths=moved.lengths, rows=moved.rows, rows_store=rows, slot=None)

    def copied(self, stream=None) -> None:
        """Record that the copies out of this batch's staging slot are issued (on ``stream``)."""
        if self.slot is not None and self.slot.event is not None:
            self.slot.event.record(stream)


class _Slot:
    def __init__(self):
        self.buffers, self.capacity, self.event = None, 0, None


class StagedDialogues:
    """The fallback for a split that does not fit on the device: each batch's valid utterances are
    written once into a reused pinned host buffer (two slots, alternating, each refilled only after
    the copies out of it have run), with one zero row after them, and its indices point into them.
    A step then copies the valid rows, not the padded B x L features; a graphed step copies them on a
    side stream ordered against the replays (``graphs.GraphedTrainer``)."""

    def __init__(self, dialogues: Sequence[Dialogue], dtype=torch.float32, pin: bool = False):
        self.dialogues = list(dialogues)
        self.dtype, self.pin = dtype, bool(pin)
        self.dims = [self.dialogues[0].feature(m).shape[1] for m in MODALITIES]
        self.slots = [_Slot(), _Slot()]
        self._next = 0

    def _slot(self, rows: int) -> _Slot:
        slot = self.slots[self._next]
        self._next = 1 - self._next
        if slot.event is not None:
            slot.event.synchronize()  # the copies out of it (two steps ago) have run
        if slot.capacity < rows:
            def alloc(shape, dtype):
                t = torch.empty(shape, dtype=dtype)
                return t.pin_memory() if self.pin else t
            slot.buffers = [alloc((rows, d), self.dtype) for d in self.dims] + \
                [alloc((rows,), torch.long), alloc((rows,), torch.long)]
            slot.capacity = rows
            slot.event = torch.cuda.Event() if self.pin else None
        return slot

    def staged_batch(self, chunk: Sequence[int], shape: Optional[Tuple[int, int]] = None,
                     capacity: Optional[int] = None) -> StagedBatch:
        """The batch of dialogues ``chunk``, padded to ``shape``, its valid rows staged in
        ``capacity`` rows (default: as many as there are) and one zero row."""
        from ..packing import row_bucket
        ds = [self.dialogues[i] for i in chunk]
        lengths = [len(d) for d in ds]
        n = sum(lengths)
        B, L = len(chunk), max(max(lengths, default=1), 1)
        if shape is not None:
            B, L = shape
        R = capacity if capacity is not None else (row_bucket(n, B * L) if shape is not None else max(n, 1))
        slot = self._slot(R + 1)
        feats = [b[:R + 1] for b in slot.buffers[:3]]
        spk, lab = slot.buffers[3][:R + 1], slot.buffers[4][:R + 1]
        # written in place through numpy views: one concatenation per array, straight into the slot
        for t, parts, fill in ([(f, [d.feature(m) for d in ds], 0) for m, f in zip(MODALITIES, feats)]
                               + [(spk, [d.speakers for d in ds], 0), (lab, [d.labels for d in ds], -1)]):
            view = t.numpy()
            if n:
                np.concatenate(parts, axis=0, out=view[:n], casting="unsafe")
            view[n:] = fill
        idx = np.full((B, L), R, dtype=np.int64)
        at = 0
        for b, k in enumerate(lengths):
            idx[b, :k] = np.arange(at, at + k)
            at += k
        lens = torch.zeros(B, dtype=torch.long)
        lens[:len(chunk)] = torch.tensor(lengths, dtype=torch.long)
        batch = StagedBatch(torch.from_numpy(idx), lens, [d.id for d in ds], R, rows_store=_Rows(feats, spk, lab),
                            slot=slot)
        return batch.pin_memory() if self.pin else batch

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: Optional[torch.Generator] = None,
                pin: bool = False, bucket: Optional[Callable[[int, int], Tuple[int, int]]] = None,
                group_by_length: bool = False) -> Iterator[StagedBatch]:
        """The batches ``iterate_batches`` would draw with the same arguments, staged."""
        for chunk in batch_indices([len(d) for d in self.dialogues], batch_size, shuffle=shuffle,
                                   generator=generator, group_by_length=group_by_length):
            longest = max(len(self.dialogues[i]) for i in chunk)
            shape = bucket(len(chunk), longest) if bucket is not None else None
            yield self.staged_batch(chunk, shape)
