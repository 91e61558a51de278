"""The manifest of one's own conversations: one row per utterance, as a CSV file with a header or
JSON Lines with the same keys.

Keys: ``dialogue``, ``utterance`` (its index in the dialogue, 0, 1, ...), ``speaker``, ``text``
(the transcript); optional: ``audio`` (a sound file; ``start`` and ``end`` seconds inside it),
``video`` (a video file, or a folder of frames with ``fps``, cut by the same ``start``/``end``),
``label`` (a class name or index), ``split`` (train, valid or test; default train). Relative paths
are relative to the manifest's folder. Every problem is a ``ManifestError`` naming the file, the
row and what is wrong.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

REQUIRED = ("dialogue", "utterance", "speaker", "text")
OPTIONAL = ("audio", "video", "start", "end", "fps", "label", "split")
SPLITS = ("train", "valid", "test")


class ManifestError(ValueError):
    """A manifest row (or the whole file) is not usable; the message names where and why."""


@dataclass
class Utterance:
    dialogue: str
    index: int
    speaker: str
    text: str
    audio: Optional[str] = None
    video: Optional[str] = None
    start: Optional[float] = None
    end: Optional[float] = None
    fps: Optional[float] = None
    label: Optional[str] = None
    split: str = "train"
    row: int = 0  # the manifest row (1-based, the header not counted), for messages

    def span(self) -> str:
        return f"{self.start if self.start is not None else ''}-{self.end if self.end is not None else ''}"


@dataclass
class Manifest:
    path: str
    dialogues: Dict[str, List[Utterance]] = field(default_factory=dict)

    @property
    def utterances(self) -> List[Utterance]:
        return [u for d in self.dialogues.values() for u in d]

    def speaker_ids(self, dialogue: str) -> List[int]:
        """The dialogue's speakers numbered in order of first appearance."""
        order: Dict[str, int] = {}
        return [order.setdefault(u.speaker, len(order)) for u in self.dialogues[dialogue]]

    def check_speakers(self, num_speakers: int) -> None:
        for name, rows in self.dialogues.items():
            n = len({u.speaker for u in rows})
            if n > num_speakers:
                raise ManifestError(f"{self.path}: dialogue {name!r} has {n} speakers, more than the model's "
                                    f"num_speakers {num_speakers} (raise it with --num-speakers)")

    def labels(self, classes: Sequence[str]) -> Dict[str, List[int]]:
        """Each dialogue's labels as class indices (-1 where a row has none); a name not in
        ``classes`` (or an index out of range) is an error naming the row."""
        lookup = {c.lower(): i for i, c in enumerate(classes)}
        out = {}
        for name, rows in self.dialogues.items():
            ids = []
            for u in rows:
                if u.label is None:
                    ids.append(-1)
                elif u.label.lower() in lookup:
                    ids.append(lookup[u.label.lower()])
                elif u.label.lstrip("-").isdigit() and 0 <= int(u.label) < len(classes):
                    ids.append(int(u.label))
                else:
                    raise ManifestError(f"{self.path}: row {u.row}: unknown label {u.label!r}; the classes are "
                                        f"{', '.join(classes)} (or give --classes)")
            out[name] = ids
        return out


def _read_rows(path: str) -> List[dict]:
    ext = os.path.splitext(path)[1].lower()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            if ext in (".jsonl", ".json", ".ndjson"):
                rows = []
                for n, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ManifestError(f"{path}: line {n}: not JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise ManifestError(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}")
                    rows.append(obj)
                return rows
            reader = csv.DictReader(fh)
            if reader.fieldnames is None:
                raise ManifestError(f"{path}: empty manifest (expected a header: {', '.join(REQUIRED)}, ...)")
            return [dict(r) for r in reader]
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def _value(row: dict, key: str):
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, str):
        v = v.strip()
        return v if v != "" else None
    return v


def _number(path, n, key, v, integer=False):
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ManifestError(f"{path}: row {n}: {key} {v!r} is not a number") from None
    if not math.isfinite(x) or x < 0 or (integer and x != int(x)):
        raise ManifestError(f"{path}: row {n}: {key} {v!r} must be a {'whole ' if integer else ''}number >= 0")
    return int(x) if integer else x


def read_manifest(path: str, *, need_audio: bool = False, need_video: bool = False) -> Manifest:
    """The manifest at ``path``, checked: required keys, numbers, files that exist, unique
    (dialogue, utterance) keys, each dialogue's rows contiguous with utterance indices 0, 1, ..."""
    path = os.fspath(path)
    rows = _read_rows(path)
    if not rows:
        raise ManifestError(f"{path}: no utterances")
    base = os.path.dirname(os.path.abspath(path))
    missing = [k for k in REQUIRED if k not in rows[0]]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (required: {', '.join(REQUIRED)})")
    out = Manifest(path)
    seen, last = set(), None
    for n, row in enumerate(rows, 1):
        values = {k: _value(row, k) for k in REQUIRED + OPTIONAL}
        for k in ("dialogue", "utterance", "speaker"):
            if values[k] is None:
                raise ManifestError(f"{path}: row {n}: empty {k}")
        dialogue = str(values["dialogue"])
        index = _number(path, n, "utterance", values["utterance"], integer=True)
        if (dialogue, index) in seen:
            raise ManifestError(f"{path}: row {n}: duplicate utterance {index} of dialogue {dialogue!r}")
        seen.add((dialogue, index))
        if dialogue != last and dialogue in out.dialogues:
            raise ManifestError(f"{path}: row {n}: dialogue {dialogue!r} continues after other rows; keep a "
                                f"dialogue's rows together")
        expected = len(out.dialogues.get(dialogue, []))
        if index != expected:
            raise ManifestError(f"{path}: row {n}: dialogue {dialogue!r} rows out of order: utterance {index} "
                                f"where {expected} was expected (rows in utterance order, from 0)")
        last = dialogue
        start = _number(path, n, "start", values["start"])
        end = _number(path, n, "end", values["end"])
        if start is not None and end is not None and end <= start:
            raise ManifestError(f"{path}: row {n}: end {end} is not after start {start}")
        files = {}
        for key, needed in (("audio", need_audio), ("video", need_video)):
            f = values[key]
            if f is None:
                if needed:
                    flag = "--audio none" if key == "audio" else "--visual none"
                    raise ManifestError(f"{path}: row {n}: no {key} file (the {key} extractor needs one per row; "
                                        f"or {flag})")
                files[key] = None
                continue
            f = str(f) if os.path.isabs(str(f)) else os.path.join(base, str(f))
            if not os.path.exists(f):
                raise ManifestError(f"{path}: row {n}: {key} file {values[key]!r} not found")
            files[key] = f
        fps = _number(path, n, "fps", values["fps"])
        if files["video"] is not None and os.path.isdir(files["video"]) and need_video and not fps:
            raise ManifestError(f"{path}: row {n}: video {values['video']!r} is a folder of frames: give its fps")
        split = str(values["split"] or "train").lower()
        if split not in SPLITS:
            raise ManifestError(f"{path}: row {n}: split {values['split']!r}: expected one of {', '.join(SPLITS)}")
        label = values["label"]
        out.dialogues.setdefault(dialogue, []).append(Utterance(
            dialogue, index, str(values["speaker"]), str(values["text"] or ""), files["audio"], files["video"],
            start, end, fps, str(label) if label is not None else None, split, n))
    for name, utts in out.dialogues.items():
        if len({u.split for u in utts}) > 1:
            raise ManifestError(f"{path}: dialogue {name!r} has rows in more than one split")
    return out
