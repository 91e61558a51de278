"""The native feature format: one safetensors file, no pickle.

Arrays: ``text``, ``audio``, ``visual`` (N_utt, D_m) float32, ``speakers`` and ``labels``
(N_utt,) int64 and ``offsets`` (n_dialogues + 1,) int64 — dialogue i is rows
``offsets[i]:offsets[i+1]``. The header's metadata key ``cmath_fast_data`` holds a JSON object with
the dialogue ids (in order), the splits, class names, speaker count, dataset and notes. Loading it
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
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: feature format version {meta.get('version')!r}, this cmath-fast "
                        f"reads version {FORMAT_VERSION}")
    missing = {"offsets", "text", "audio", "visual", "speakers", "labels"} - set(arrays)
    if missing:
        raise DataError(f"{path}: missing arrays {sorted(missing)}")
    offsets, ids = arrays["offsets"], meta["ids"]
    if len(offsets) != len(ids) + 1 or offsets[-1] != len(arrays["labels"]):
        raise DataError(f"{path}: offsets do not match {len(ids)} dialogues")
    dialogues = {}
    for n, vid in enumerate(ids):
        sl = slice(int(offsets[n]), int(offsets[n + 1]))
        dialogues[vid] = Dialogue(vid, arrays["text"][sl], arrays["audio"][sl], arrays["visual"][sl],
                                  arrays["speakers"][sl], arrays["labels"][sl])
    return MERData(dialogues=dialogues, splits={k: list(v) for k, v in meta["splits"].items()},
                   class_names=tuple(meta["class_names"]), num_speakers=int(meta["num_speakers"]),
                   dataset=meta.get("dataset", "custom"), layout="native",
                   notes=list(meta.get("notes", [])))
