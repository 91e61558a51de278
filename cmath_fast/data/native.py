"""The native feature format: one safetensors file, no pickle.

Arrays: ``text``, ``audio``, ``visual`` (N_utt, D_m) float32, ``speakers`` and ``labels``
(N_utt,) int64 and ``offsets`` (n_dialogues + 1,) int64 — dialogue i is rows
``offsets[i]:offsets[i+1]``. The header's metadata key ``cmath_fast_data`` holds a JSON object with
the dialogue ids (in order), the splits, class names, speaker count, dataset, notes and (for features
extracted by `cmath-fast features extract`) each modality's extractor. Loading it
never executes anything.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np

from ..io import atomic_write
from .dataset import DataError, Dialogue, MERData

FORMAT_KEY = "cmath_fast_data"
FORMAT_VERSION = 1


def _json_id(i):
    if isinstance(i, (str, int)) and not isinstance(i, bool):
        return i
    return str(i)


def save_native(data: MERData, path: str) -> None:
    from safetensors.numpy import save

    ids = list(data.dialogues)
    dialogues = [data.dialogues[i] for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(d) for d in dialogues])
    arrays: Dict[str, np.ndarray] = {"offsets": offsets}
    for key in ("text", "audio", "visual"):
        arrays[key] = np.ascontiguousarray(
            np.concatenate([getattr(d, key) for d in dialogues], axis=0).astype(np.float32))
    arrays["speakers"] = np.concatenate([d.speakers for d in dialogues]).astype(np.int64)
    arrays["labels"] = np.concatenate([d.labels for d in dialogues]).astype(np.int64)
    meta = {
        "version": FORMAT_VERSION,
        "ids": [_json_id(i) for i in ids],
        "splits": {k: [_json_id(i) for i in v] for k, v in data.splits.items()},
        "class_names": list(data.class_names),
        "num_speakers": int(data.num_speakers),
        "dataset": data.dataset,
        "source_layout": data.layout,
        "notes": list(data.notes),
        "extractors": dict(data.extractors),
    }
    payload = save(arrays, metadata={FORMAT_KEY: json.dumps(meta)})
    atomic_write(path, payload)


def load_native(path: str) -> MERData:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(os.fspath(path), framework="numpy") as fh:
            meta_raw = (fh.metadata() or {}).get(FORMAT_KEY)
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable safetensors file ({exc})") from None
    if meta_raw is None:
        raise DataError(f"{path}: a safetensors file without cmath-fast feature metadata "
                        f"(is it a checkpoint? features are written by `cmath-fast data convert`)")
    try:
        meta = json.loads(meta_raw)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: corrupt feature metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: feature metadata must be a JSON object, got a {type(meta).__name__}")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: feature format version {meta.get('version')!r}, this cmath-fast "
                        f"reads version {FORMAT_VERSION}")
    _check_meta(path, meta)
    missing = {"offsets", "text", "audio", "visual", "speakers", "labels"} - set(arrays)
    if missing:
        raise DataError(f"{path}: missing arrays {sorted(missing)}")
    n_utt = arrays["labels"].shape[0] if arrays["labels"].ndim == 1 else -1
    for key in ("text", "audio", "visual"):
        if arrays[key].ndim != 2:
            raise DataError(f"{path}: array {key!r} must be 2-D (utterances x features), got shape "
                            f"{tuple(arrays[key].shape)}")
        if not np.issubdtype(arrays[key].dtype, np.floating):
            raise DataError(f"{path}: array {key!r} must hold floats, got {arrays[key].dtype}")
    for key in ("offsets", "speakers", "labels"):
        if arrays[key].ndim != 1 or not np.issubdtype(arrays[key].dtype, np.integer):
            raise DataError(f"{path}: array {key!r} must be 1-D integers, got {arrays[key].dtype} "
                            f"of shape {tuple(arrays[key].shape)}")
    for key in ("text", "audio", "visual", "speakers"):
        if arrays[key].shape[0] != n_utt:
            raise DataError(f"{path}: array {key!r} has {arrays[key].shape[0]} rows but there are "
                            f"{n_utt} labels")
    offsets, ids = arrays["offsets"], meta["ids"]
    if len(offsets) != len(ids) + 1:
        raise DataError(f"{path}: {len(offsets)} offsets for {len(ids)} dialogues (expected {len(ids) + 1})")
    if offsets[0] != 0 or offsets[-1] != n_utt:
        raise DataError(f"{path}: offsets must start at 0 and end at the {n_utt} utterances, got "
                        f"{int(offsets[0])} .. {int(offsets[-1])}")
    steps = np.diff(offsets)
    if (steps < 0).any():
        k = int(np.argmax(steps < 0))
        raise DataError(f"{path}: offsets out of order at dialogue {ids[k]!r} ({int(offsets[k])} then "
                        f"{int(offsets[k + 1])}): dialogues would overlap")
    dialogues = {}
    for n, vid in enumerate(ids):
        sl = slice(int(offsets[n]), int(offsets[n + 1]))
        dialogues[vid] = Dialogue(vid, arrays["text"][sl], arrays["audio"][sl], arrays["visual"][sl],
                                  arrays["speakers"][sl], arrays["labels"][sl])
    for name, split_ids in meta["splits"].items():
        unknown = [i for i in split_ids if i not in dialogues]
        if unknown:
            raise DataError(f"{path}: split {name!r} names {len(unknown)} dialogue id(s) the file does "
                            f"not hold, e.g. {unknown[0]!r}")
    return MERData(dialogues=dialogues, splits={k: list(v) for k, v in meta["splits"].items()},
                   class_names=tuple(meta["class_names"]), num_speakers=int(meta["num_speakers"]),
                   dataset=str(meta.get("dataset", "custom")), layout="native",
                   notes=[str(n) for n in meta.get("notes", [])],
                   extractors=meta.get("extractors") if isinstance(meta.get("extractors"), dict) else {})


def _check_meta(path: str, meta: dict) -> None:
    """The metadata's fields: present and of the right kinds, named when they are not."""
    def bad(what):
        raise DataError(f"{path}: feature metadata: {what}")

    for key in ("ids", "splits", "class_names", "num_speakers"):
        if key not in meta:
            bad(f"missing {key!r}")
    ids = meta["ids"]
    if not isinstance(ids, list) or not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in ids):
        bad("'ids' must be a list of strings or integers")
    if len(set(ids)) != len(ids):
        bad("'ids' has duplicates")
    splits = meta["splits"]
    if not isinstance(splits, dict) or not all(
            isinstance(v, list) and all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in v)
            for v in splits.values()):
        bad("'splits' must be an object of lists of ids (strings or integers)")
    names = meta["class_names"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        bad("'class_names' must be a non-empty list of strings")
    n_spk = meta["num_speakers"]
    if isinstance(n_spk, bool) or not isinstance(n_spk, int) or n_spk < 1:
        bad(f"'num_speakers' must be a positive integer, got {n_spk!r}")
    if not isinstance(meta.get("notes", []), list):
        bad("'notes' must be a list")
