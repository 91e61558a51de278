"""In-memory MER data: dialogues with three modalities, speakers, labels and splits; batching."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import MODALITIES, MODALITY_NAMES
from ..packing import PackedRows, pack_rows


class DataError(ValueError):
    """A data file or its content is not what it should be; the message says what and where."""


@dataclass
class Dialogue:
    """One dialogue: features (L, D_m) float32 per modality, speakers (L,) and labels (L,) int64."""

    id: object
    text: np.ndarray
    audio: np.ndarray
    visual: np.ndarray
    speakers: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def feature(self, m: str) -> np.ndarray:
        return {"t": self.text, "a": self.audio, "v": self.visual}[m]


@dataclass
class MERData:
    """A whole feature file: dialogues by id, splits (lists of ids), class names, speaker count."""

    dialogues: Dict[object, Dialogue]
    splits: Dict[str, List[object]]
    class_names: Tuple[str, ...]
    num_speakers: int
    dataset: str = "custom"
    layout: str = "native"
    notes: List[str] = field(default_factory=list)
    # How each modality's features were made ({"t"|"a"|"v": description}), when known: written by
    # `cmath-fast features extract`, stored in the native file and in checkpoints trained on it.
    extractors: Dict[str, dict] = field(default_factory=dict)

    @property
    def dims(self) -> Dict[str, int]:
        first = next(iter(self.dialogues.values()))
        return {m: int(first.feature(m).shape[1]) for m in MODALITIES}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def split(self, name: str) -> List[Dialogue]:
        if name not in self.splits:
            raise DataError(f"split {name!r} not in the data; it has {sorted(self.splits)}")
        return [self.dialogues[i] for i in self.splits[name]]

    def validate(self) -> None:
        """Check every dialogue: consistent lengths and dims, labels (or -1: unlabelled, as in a
        manifest of new conversations) and speakers in range."""
        if not self.dialogues:
            raise DataError("the data holds no dialogue")
        dims = self.dims
        for d in self.dialogues.values():
            n = len(d)
            for m in MODALITIES:
                x = d.feature(m)
                if x.ndim != 2:
                    raise DataError(f"dialogue {d.id!r}: {MODALITY_NAMES[m]} features must be 2-D "
                                    f"(utterances x features), got shape {tuple(x.shape)}")
                if x.shape[0] != n:
                    raise DataError(
                        f"dialogue {d.id!r}: {MODALITY_NAMES[m]} has {x.shape[0]} utterances but there "
                        f"are {n} labels")
                if x.shape[1] != dims[m]:
                    raise DataError(
                        f"dialogue {d.id!r}: {MODALITY_NAMES[m]} dim {x.shape[1]}, other dialogues "
                        f"have {dims[m]}")
                if not np.isfinite(x).all():
                    raise DataError(f"dialogue {d.id!r}: {MODALITY_NAMES[m]} features hold NaN or inf")
            if d.speakers.shape != (n,):
                raise DataError(f"dialogue {d.id!r}: {d.speakers.shape[0]} speakers for {n} utterances")
            bad = d.labels[(d.labels < -1) | (d.labels >= self.num_classes)]  # -1: unlabelled
            if bad.size:
                raise DataError(
                    f"dialogue {d.id!r}: label {int(bad[0])} outside the {self.num_classes} classes "
                    f"0..{self.num_classes - 1} ({', '.join(self.class_names)})")
            if n and (d.speakers.min() < 0 or d.speakers.max() >= self.num_speakers):
                raise DataError(
                    f"dialogue {d.id!r}: speaker index {int(d.speakers.max())} outside "
                    f"[0, {self.num_speakers})")
        for name, ids in self.splits.items():
            missing = [i for i in ids if i not in self.dialogues]
            if missing:
                raise DataError(f"split {name!r} names {len(missing)} unknown dialogue(s), e.g. {missing[0]!r}")
            if len(set(ids)) != len(ids):
                raise DataError(f"split {name!r} names a dialogue more than once")

    def check_trainable(self) -> None:
        """What training needs beyond a valid file: a non-empty train split."""
        if not self.splits.get("train"):
            raise DataError("the data has no train split (or an empty one): it can be evaluated or "
                            f"predicted, not trained on; its splits are {sorted(self.splits)}")
        unlabelled = sum(int((self.dialogues[i].labels < 0).sum()) for i in self.splits["train"])
        if unlabelled:
            raise DataError(f"the train split has {unlabelled} unlabelled utterance(s) (label -1): label them, or "
                            f"put their dialogues in the test split (predicted, not scored)")

    def feature_stats(self, split: str = "train") -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Per-feature mean and std over the utterances of ``split`` (for the standardisation)."""
        return feature_stats(self.split(split) if split in self.splits else list(self.dialogues.values()))

    def summary(self) -> List[str]:
        lines = [f"layout: {self.layout} ({self.dataset})",
                 "dims: " + ", ".join(f"{MODALITY_NAMES[m]} {d}" for m, d in self.dims.items()),
                 f"speakers: {self.num_speakers}",
                 f"classes: {self.num_classes} ({', '.join(self.class_names)})"]
        for name, ids in self.splits.items():
            utts = sum(len(self.dialogues[i]) for i in ids)
            lines.append(f"split {name}: {len(ids)} dialogues, {utts} utterances")
        counts = Counter()
        for d in self.dialogues.values():
            counts.update(d.labels.tolist())
        hist = ", ".join(f"{self.class_names[c]} {counts.get(c, 0)}" for c in range(self.num_classes))
        if counts.get(-1):
            hist += f"; unlabelled {counts[-1]}"
        lines.append(f"labels: {hist}")
        lengths = [len(d) for d in self.dialogues.values()]
        lines.append(f"dialogue length: min {min(lengths)}, mean {np.mean(lengths):.1f}, max {max(lengths)}")
        for m, desc in self.extractors.items():
            lines.append(f"{MODALITY_NAMES.get(m, m)} extractor: " + ", ".join(
                f"{k} {v}" for k, v in desc.items() if v is not None and k != "name") + f" ({desc.get('name')})")
        lines.extend(f"note: {n}" for n in self.notes)
        return lines


def data_fingerprint(data: MERData, path: Optional[str] = None) -> dict:
    """What a run was trained on: the file (absolute path and size; None for data made in memory),
    a SHA-256 of the content (every dialogue's id, features, speakers and labels, in id order) and
    one of each split's ids. A resume compares it, so that a run never mixes two datasets."""
    import hashlib
    import os
    content = hashlib.sha256()
    for key in sorted(data.dialogues, key=str):
        d = data.dialogues[key]
        content.update(repr(key).encode())
        for arr in (d.text, d.audio, d.visual, d.speakers, d.labels):
            content.update(np.ascontiguousarray(arr).tobytes())
    splits = {name: hashlib.sha256("\n".join(map(repr, ids)).encode()).hexdigest()[:16]
              for name, ids in sorted(data.splits.items())}
    return {"path": os.path.abspath(path) if path else None,
            "size": os.path.getsize(path) if path and os.path.isfile(path) else None,
            "source": f"{data.layout} ({data.dataset})", "sha256": content.hexdigest(), "splits": splits}


def describe_fingerprint(fp: Optional[dict]) -> str:
    if not fp:
        return "unrecorded data"
    where = fp.get("path") or fp.get("source") or "data in memory"
    return f"{where} (content {str(fp.get('sha256'))[:12]})"


def feature_stats(dialogues: Sequence[Dialogue]) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Per-feature (mean, std) of each modality over the utterances of ``dialogues``."""
    stats = {}
    for m in MODALITIES:
        x = np.concatenate([d.feature(m) for d in dialogues if len(d)], axis=0).astype(np.float64)
        stats[m] = (x.mean(0).astype(np.float32), x.std(0).astype(np.float32))
    return stats


@dataclass
class Batch:
    text: torch.Tensor
    audio: torch.Tensor
    visual: torch.Tensor
    speakers: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    ids: List[object]
    # The packed layout of the lengths (``with_rows``), built on the host: the fused model's
    # packed forward then reads nothing back from the device to learn it.
    rows: Optional[PackedRows] = None

    def to(self, device, feature_dtype: Optional[torch.dtype] = None) -> "Batch":
        """On ``device``, features in ``feature_dtype`` when given. Copies from pinned memory (see
        ``iterate_batches(pin=True)``) do not block the host."""
        def move(t, dtype=None):
            return t.to(device, dtype=dtype, non_blocking=t.is_pinned())
        feats = [move(t, feature_dtype) for t in (self.text, self.audio, self.visual)]
        rows = self.rows.to(device, non_blocking=True) if self.rows is not None else None
        return Batch(*feats, *(move(t) for t in (self.speakers, self.lengths, self.labels)), ids=self.ids,
                     rows=rows)

    def pin_memory(self) -> "Batch":
        return Batch(*(t.pin_memory() for t in (self.text, self.audio, self.visual, self.speakers,
                                                 self.lengths, self.labels)), ids=self.ids,
                     rows=self.rows.pin_memory() if self.rows is not None else None)

    def with_rows(self, n_rows: Optional[int] = None) -> "Batch":
        """This batch with its packed layout (``cmath_fast.packing.pack_rows`` of its lengths, in
        ``n_rows`` rows: default the valid count), built where the lengths are (the host)."""
        rows = pack_rows(self.lengths, self.shape[1], n_rows)
        if self.lengths.is_pinned():
            rows = rows.pin_memory()
        return Batch(self.text, self.audio, self.visual, self.speakers, self.lengths, self.labels, self.ids,
                     rows=rows)

    def inputs(self):
        return self.text, self.audio, self.visual, self.speakers, self.lengths

    def model_kwargs(self) -> dict:
        """Keyword arguments of the model call besides ``inputs()``: the packed layout if any."""
        return {} if self.rows is None else {"rows": self.rows}

    @property
    def shape(self) -> Tuple[int, int]:
        """(dialogues, padded length)."""
        return tuple(self.speakers.shape)

    def padded(self, B: int, L: int) -> "Batch":
        """The batch padded to B dialogues of length L: extra dialogues are empty (length 0), extra
        positions padding (features 0, labels -1). Inert through the model's masks; ``ids`` keeps
        the real dialogues only."""
        b, l = self.shape
        if (b, l) == (B, L):
            return self
        if B < b or L < l:
            raise ValueError(f"Batch.padded: cannot pad a ({b}, {l}) batch to ({B}, {L})")

        def pad(t, value=0):
            out = t.new_full((B, L) + tuple(t.shape[2:]), value)
            out[:b, :l] = t
            return out
        lengths = self.lengths.new_zeros(B)
        lengths[:b] = self.lengths
        out = Batch(pad(self.text), pad(self.audio), pad(self.visual), pad(self.speakers), lengths,
                    pad(self.labels, -1), self.ids)
        # pinned stays pinned: the copies to the GPU then never block the host
        return out.pin_memory() if self.lengths.is_pinned() else out


def collate(dialogues: Sequence[Dialogue], shape: Optional[Tuple[int, int]] = None) -> Batch:
    """Right-pad a list of dialogues into one batch (padded labels are -1); ``shape`` (B, L): pad
    further, to B dialogues (the extra ones empty) of length L."""
    B = len(dialogues)
    L = max((len(d) for d in dialogues), default=0)
    L = max(L, 1)
    if shape is not None:
        if shape[0] < B or shape[1] < L:
            raise ValueError(f"collate: {B} dialogues of up to {L} utterances do not fit shape {shape}")
        B, L = shape
    feats = {}
    for m in MODALITIES:
        D = dialogues[0].feature(m).shape[1]
        x = np.zeros((B, L, D), dtype=np.float32)
        for b, d in enumerate(dialogues):
            x[b, : len(d)] = d.feature(m)
        feats[m] = torch.from_numpy(x)
    speakers = np.zeros((B, L), dtype=np.int64)
    labels = np.full((B, L), -1, dtype=np.int64)
    for b, d in enumerate(dialogues):
        speakers[b, : len(d)] = d.speakers
        labels[b, : len(d)] = d.labels
    lengths = torch.zeros(B, dtype=torch.long)
    lengths[: len(dialogues)] = torch.tensor([len(d) for d in dialogues], dtype=torch.long)
    return Batch(feats["t"], feats["a"], feats["v"], torch.from_numpy(speakers), lengths,
                 torch.from_numpy(labels), [d.id for d in dialogues])


def iterate_batches(dialogues: Sequence[Dialogue], batch_size: int, *, shuffle: bool = False,
                    generator: Optional[torch.Generator] = None, pin: bool = False,
                    bucket: Optional[Callable[[int, int], Tuple[int, int]]] = None,
                    group_by_length: bool = False) -> Iterator[Batch]:
    """Batches of ``batch_size`` dialogues (in a seeded order when ``shuffle``); ``pin``: in pinned
    host memory, for non-blocking copies to a GPU; ``bucket(n_dialogues, longest)`` -> the (B, L)
    each batch is padded to (the static shapes of CUDA graphs); ``group_by_length``: batches of
    dialogues of similar length (less padding) — the shuffled order is cut into pools of
    ``GROUP_POOL`` batches, each pool sorted by length and cut into batches, and the batches
    shuffled (seeded)."""
    for chunk in batch_indices([len(d) for d in dialogues], batch_size, shuffle=shuffle, generator=generator,
                               group_by_length=group_by_length):
        chunk = [dialogues[i] for i in chunk]
        shape = bucket(len(chunk), max(len(d) for d in chunk)) if bucket is not None else None
        batch = collate(chunk, shape)
        yield batch.pin_memory() if pin else batch


GROUP_POOL = 32


def batch_indices(lengths: Sequence[int], batch_size: int, *, shuffle: bool = False,
                  generator: Optional[torch.Generator] = None, group_by_length: bool = False) -> List[List[int]]:
    """The dialogue indices of each batch, as ``iterate_batches`` draws them."""
    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    pool = batch_size * GROUP_POOL
    batches = []
    for start in range(0, n, pool):
        chunk = sorted(order[start:start + pool], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    return batches


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
