"""Readers for the public IEMOCAP/MELD feature pickles of the MER lineage, and format detection.

Layouts (tuples of dicts keyed by dialogue id; python-2 era pickles):

- SDT ``iemocap_multimodal_features.pkl``, 12 items: videoIDs, videoSpeakers, videoLabels,
  videoText (RoBERTa), roberta2, roberta3, roberta4, videoAudio, videoVisual, videoSentence,
  trainVid, testVid; ``meld_multimodal_features.pkl``: the same plus one trailing unused item.
- MMGCN/DialogueGCN ``IEMOCAP_features.pkl``, 9 items: videoIDs, videoSpeakers, videoLabels,
  videoText, videoAudio, videoVisual, videoSentence, trainVid, testVid; ``MELD_features_raw1.pkl``:
  the same plus one trailing unused item.

IEMOCAP speakers are 'M'/'F' (mapped to 0/1); MELD speakers are one-hot vectors (mapped to their
index). Dims are read from the data, never assumed.
"""

from __future__ import annotations

import os
import pickle
import struct
from typing import Any, Dict, List

import numpy as np

from ..config import IEMOCAP_CLASSES, MELD_CLASSES, MODALITIES, MODALITY_NAMES, CMATHConfig
from .dataset import DataError, Dialogue, MERData
from .safe_pickle import UnsafePickleError, safe_loads

# tuple length -> (layout name, dataset it is usually, index of each field)
_SDT = dict(ids=0, speakers=1, labels=2, t=3, a=7, v=8, train=10, test=11)
_MMGCN = dict(ids=0, speakers=1, labels=2, t=3, a=4, v=5, train=7, test=8)
LAYOUTS = {
    12: ("sdt", "iemocap", _SDT),
    13: ("sdt", "meld", _SDT),
    9: ("mmgcn", "iemocap", _MMGCN),
    10: ("mmgcn", "meld", _MMGCN),
}
CLASSES = {"iemocap": IEMOCAP_CLASSES, "meld": MELD_CLASSES}

# Known non-default dims: (dataset, modality, dim) -> the likely source.
KNOWN_VARIANTS = {
    ("iemocap", "t", 100): "DialogueGCN/MMGCN's 100-dim text CNN features",
    ("iemocap", "a", 100): "DialogueGCN's 100-dim audio features",
    ("iemocap", "v", 512): "DialogueGCN's 512-dim visual features",
    ("meld", "t", 600): "MMGCN's 600-dim MELD text features",
    ("meld", "t", 100): "DialogueGCN's 100-dim MELD text features",
}
IEMOCAP_SPEAKERS = {"M": 0, "F": 1}


def describe_dim_difference(dataset: str, m: str, dim: int) -> str:
    preset = CMATHConfig.preset(dataset).feature_dims()[m]
    hint = KNOWN_VARIANTS.get((dataset, m, dim))
    text = f"{MODALITY_NAMES[m]} dim {dim} differs from the {dataset} preset's {preset}"
    return f"{text} (likely {hint})" if hint else text


def is_safetensors(head: bytes) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def load_features(path: str) -> MERData:
    """Load any supported feature file (a lineage pickle or our safetensors format), validated."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DataError(f"{path}: a folder; --data takes a feature file (a lineage .pkl or a "
                        f"native .safetensors)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        if is_safetensors(raw[:16]):
            from .native import load_native
            data = load_native(path)
        elif raw[:1] == b"\x80" or raw[:1] in (b"(", b"]", b"}"):
            data = parse_pickle(_unpickle(raw, path), path)
        else:
            raise DataError(f"{path}: neither a pickle nor a cmath-fast safetensors feature file")
    except DataError:
        raise
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
        # A structure no check above anticipated: still one line, naming the file.
        detail = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: unexpected content for a feature file ({type(exc).__name__}: {detail})") from None
    try:
        data.validate()
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return data


def _unpickle(raw: bytes, path: str) -> Any:
    try:
        return safe_loads(raw)
    except UnsafePickleError as exc:
        raise DataError(f"{path}: {exc}") from None
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError,
            struct.error, MemoryError) as exc:
        raise DataError(f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc})") from None


def _labels(raw, vid, path) -> np.ndarray:
    out = []
    for x in raw:
        if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer, float, np.floating)) \
                or float(x) != int(x):
            raise DataError(f"{path}: dialogue {vid!r}: label {x!r} is not a class index (the lineage "
                            f"files store integers 0..C-1)")
        out.append(int(x))
    return np.asarray(out, dtype=np.int64)


def parse_pickle(obj: Any, path: str = "<pickle>") -> MERData:
    """Turn the unpickled tuple of a lineage file into MERData (detecting the layout)."""
    if not isinstance(obj, (tuple, list)):
        raise DataError(f"{path}: expected a tuple of dicts (a lineage feature pickle), got "
                        f"{type(obj).__name__}")
    if len(obj) not in LAYOUTS:
        raise DataError(
            f"{path}: a tuple of {len(obj)} items matches no known layout (SDT: 12 for IEMOCAP, "
            f"13 for MELD; MMGCN/DialogueGCN: 9 for IEMOCAP, 10 for MELD)")
    family, dataset_by_length, idx = LAYOUTS[len(obj)]
    for key in ("ids", "speakers", "labels", "t", "a", "v"):
        if not isinstance(obj[idx[key]], dict):
            raise DataError(f"{path}: item {idx[key]} ({key}) of the {len(obj)}-tuple should be a dict "
                            f"keyed by dialogue id, got {type(obj[idx[key]]).__name__}")
    speakers_raw, labels_raw = obj[idx["speakers"]], obj[idx["labels"]]
    dataset = _dataset_from_speakers(speakers_raw) or dataset_by_length
    notes: List[str] = []
    if dataset != dataset_by_length:
        notes.append(f"the tuple length suggests {dataset_by_length} but the speakers look like "
                     f"{dataset}'s; read as {dataset}")
    splits = {}
    for name in ("train", "test"):
        ids = obj[idx[name]]
        if not isinstance(ids, (list, tuple, set, frozenset, np.ndarray)):
            raise DataError(f"{path}: the {name} split should be a list or set of dialogue ids, got "
                            f"{type(ids).__name__}")
        split_ids = [_plain(i) for i in ids]
        bad = next((i for i in split_ids if not isinstance(i, (str, int, float))), None)
        if bad is not None:
            raise DataError(f"{path}: the {name} split should hold dialogue ids (strings or numbers), got "
                            f"a {type(bad).__name__}")
        splits[name] = sorted(split_ids, key=_sort_key)

    num_speakers = 2 if dataset == "iemocap" else 0
    dialogues: Dict[Any, Dialogue] = {}
    ids = sorted((_plain(k) for k in labels_raw), key=_sort_key)
    for vid in ids:
        key = _find_key(labels_raw, vid)
        labels = _labels(labels_raw[key], vid, path)
        feats = {}
        for m in MODALITIES:
            table = obj[idx[m]]
            if key not in table:
                raise DataError(f"{path}: dialogue {vid!r} has labels but no {MODALITY_NAMES[m]} features")
            feats[m] = _matrix(table[key], vid, m, path)
        if key not in speakers_raw:
            raise DataError(f"{path}: dialogue {vid!r} has labels but no speakers")
        speakers, n_spk = _speakers(speakers_raw[key], dataset, vid, path)
        num_speakers = max(num_speakers, n_spk)
        for m in MODALITIES:
            if feats[m].shape[0] != len(labels):
                raise DataError(
                    f"{path}: dialogue {vid!r}: {MODALITY_NAMES[m]} has {feats[m].shape[0]} utterances "
                    f"but there are {len(labels)} labels (modalities disagree in length)")
        if len(speakers) != len(labels):
            raise DataError(f"{path}: dialogue {vid!r}: {len(speakers)} speakers for {len(labels)} labels")
        if len(labels) == 0:
            notes.append(f"dialogue {vid!r} is empty and was skipped")
            continue
        dialogues[vid] = Dialogue(vid, feats["t"], feats["a"], feats["v"], speakers, labels)
    empty = {vid for vid in ids if vid not in dialogues}
    for name in splits:
        unknown = [i for i in splits[name] if i not in dialogues and i not in empty]
        if unknown:
            # Kept as a note, not an error: a split list naming a dialogue without features cannot
            # be trained on, and the lineage files are used as they are distributed.
            notes.append(f"split {name!r} names {len(unknown)} dialogue id(s) with no features in the "
                         f"file (e.g. {unknown[0]!r}); they were left out")
        splits[name] = [i for i in splits[name] if i in dialogues]
    data = MERData(dialogues=dialogues, splits=splits, class_names=CLASSES[dataset],
                   num_speakers=num_speakers, dataset=dataset,
                   layout=f"{family}-{dataset} ({len(obj)}-tuple)", notes=notes)
    if not dialogues:
        raise DataError(f"{path}: the file holds no dialogue")
    for m, dim in data.dims.items():
        if dim != CMATHConfig.preset(dataset).feature_dims()[m]:
            data.notes.append(describe_dim_difference(dataset, m, dim))
    return data


def _plain(x):
    """numpy scalars and bytes as plain JSON-able python values."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, bytes):
        x = x.decode("latin1")
    return x


def _sort_key(x):
    return (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x))


def _find_key(table: dict, vid):
    if vid in table:
        return vid
    for k in table:
        if _plain(k) == vid:
            return k
    raise DataError(f"dialogue {vid!r} not found")


def _matrix(value, vid, m, path) -> np.ndarray:
    try:
        x = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: dialogue {vid!r}: {MODALITY_NAMES[m]} features are not a numeric "
                        f"matrix ({exc})") from None
    if x.ndim == 1 and x.size == 0:
        return x.reshape(0, 0)
    if x.ndim != 2:
        raise DataError(f"{path}: dialogue {vid!r}: {MODALITY_NAMES[m]} features should be 2-D "
                        f"(utterances x dim) or a list of 1-D vectors, got shape {x.shape}")
    return x


def _dataset_from_speakers(table: dict):
    for value in table.values():
        for s in value:
            s = _plain(s)
            if isinstance(s, str):
                return "iemocap"
            if isinstance(s, (list, tuple, np.ndarray)):
                return "meld"
            return None
    return None


def _speakers(value, dataset, vid, path):
    out = []
    n_spk = 0
    for s in value:
        s = _plain(s)
        if isinstance(s, str):
            if s not in IEMOCAP_SPEAKERS:
                raise DataError(f"{path}: dialogue {vid!r}: unknown speaker {s!r} (expected 'M' or 'F')")
            out.append(IEMOCAP_SPEAKERS[s])
            n_spk = max(n_spk, 2)
        elif isinstance(s, (list, tuple, np.ndarray)):
            vec = np.asarray(s, dtype=np.float64)
            if vec.ndim != 1 or not vec.size:
                raise DataError(f"{path}: dialogue {vid!r}: a speaker should be a one-hot vector, got {vec!r}")
            out.append(int(vec.argmax()))
            n_spk = max(n_spk, vec.size)
        elif isinstance(s, (int, np.integer)):
            out.append(int(s))
            n_spk = max(n_spk, int(s) + 1)
        else:
            raise DataError(f"{path}: dialogue {vid!r}: unreadable speaker {s!r}")
    return np.asarray(out, dtype=np.int64), n_spk
