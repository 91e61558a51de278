"""``cmath-fast features extract MANIFEST --out FILE.safetensors``: a manifest's utterances through
the text, audio and visual extractors into the native feature file, with a per-utterance cache so
that an interrupted extraction resumes where it stopped.

The cache holds one ``.npy`` per (modality, utterance), named by a hash of the extractor's full
description and of what the utterance's features come from: the transcript (text), or the source
file's path, size and modification time and the span (audio, video). A changed file, span or
extractor is extracted again; everything else is read back.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..config import IEMOCAP_CLASSES, MELD_CLASSES, MODALITIES, MODALITY_NAMES as MODALITY_LONG
from ..data.dataset import Dialogue, MERData
from ..data.native import save_native
from .extractors import (ImageEncoder, Missing, OpenSmileFunctionals, SpeechEncoder, TextEncoder)
from .manifest import Manifest, ManifestError, Utterance, read_manifest

DATASETS = {"iemocap": (IEMOCAP_CLASSES, 2), "meld": (MELD_CLASSES, 9)}
# Label names a manifest may use for the IEMOCAP classes' short names.
ALIASES = {"happy": "hap", "happiness": "hap", "sadness": "sad", "neutral": "neu", "angry": "ang", "anger": "ang",
           "excited": "exc", "excitement": "exc", "frustrated": "fru", "frustration": "fru"}


@dataclass
class ExtractOptions:
    text_model: str = "roberta-large"
    text_pooling: str = "cls"
    audio: str = "opensmile:IS10"  # opensmile:FEATURE_SET | none
    audio_model: Optional[str] = None  # a transformers speech encoder (replaces --audio)
    audio_dim: int = 1582  # the width written for --audio none
    visual: str = "none"  # none | a transformers image encoder (same as --visual-model)
    visual_model: Optional[str] = None
    visual_dim: int = 342  # the width written for --visual none
    frames: int = 8
    dataset: str = "iemocap"  # whose classes and speaker count, unless --classes / --num-speakers
    classes: Optional[Sequence[str]] = None
    num_speakers: Optional[int] = None
    device: Optional[str] = None
    batch_size: int = 16
    cache: Optional[str] = None  # default: OUT + ".cache"


def build_extractors(opts: ExtractOptions) -> Dict[str, object]:
    """{"t", "a", "v"} -> extractor, from the options."""
    text = TextEncoder(opts.text_model, opts.text_pooling, opts.device, opts.batch_size)
    if opts.audio_model:
        audio = SpeechEncoder(opts.audio_model, opts.device)
    elif opts.audio == "none":
        audio = Missing("audio", opts.audio_dim)
    elif opts.audio.startswith("opensmile:") or opts.audio == "opensmile":
        audio = OpenSmileFunctionals(opts.audio.partition(":")[2] or "IS10")
    else:
        raise ManifestError(f"--audio: expected opensmile:FEATURE_SET or none, got {opts.audio!r}")
    model = opts.visual_model or (opts.visual if opts.visual != "none" else None)
    visual = ImageEncoder(model, opts.frames, opts.device) if model else Missing("visual", opts.visual_dim)
    return {"t": text, "a": audio, "v": visual}


def _source_key(u: Utterance, modality: str) -> dict:
    if modality == "t":
        return {"text": u.text}
    path = u.audio if modality == "a" else u.video
    if path is None:
        return {}
    st = os.stat(path)
    key = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "span": u.span()}
    if modality == "v" and os.path.isdir(path):
        key.update(fps=u.fps, files=len(os.listdir(path)))
    return key


def cache_key(description: dict, u: Utterance, modality: str) -> str:
    blob = json.dumps({"extractor": description, "source": _source_key(u, modality)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class Cache:
    """One ``.npy`` per (modality, utterance) in ``folder``, written atomically."""

    def __init__(self, folder: str):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def _path(self, modality: str, key: str) -> str:
        return os.path.join(self.folder, f"{modality}-{key}.npy")

    def get(self, modality: str, key: str) -> Optional[np.ndarray]:
        p = self._path(modality, key)
        if not os.path.isfile(p):
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a torn or foreign file: extracted again

    def put(self, modality: str, key: str, x: np.ndarray) -> None:
        p = self._path(modality, key)
        tmp = p + f".{os.getpid()}.tmp"
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(x, dtype=np.float32), allow_pickle=False)
        os.replace(tmp, p)


def class_names(opts: ExtractOptions) -> tuple:
    if opts.classes:
        names = tuple(c.strip() for c in opts.classes if c.strip())
        if len(set(n.lower() for n in names)) != len(names) or len(names) < 2:
            raise ManifestError(f"--classes: expected at least two distinct names, got {', '.join(names)}")
        return names
    if opts.dataset not in DATASETS:
        raise ManifestError(f"--dataset: expected one of {', '.join(DATASETS)}, got {opts.dataset!r}")
    return DATASETS[opts.dataset][0]


def _labels(manifest: Manifest, names: tuple) -> Dict[str, List[int]]:
    lower = {n.lower() for n in names}
    for u in manifest.utterances:  # the IEMOCAP short names under their common long forms
        if u.label is not None and u.label.lower() not in lower and ALIASES.get(u.label.lower()) in lower:
            u.label = ALIASES[u.label.lower()]
    return manifest.labels(names)


def extract(manifest_path: str, out: str, opts: ExtractOptions, *, extractors=None,
            progress: Optional[Callable[[str, int], object]] = None, log=print) -> MERData:
    """Extract every utterance of the manifest and write ``out`` (native format); -> the data.
    ``extractors``: given ones (tests), else built from ``opts``."""
    extractors = extractors or build_extractors(opts)
    n_spk = opts.num_speakers or (DATASETS[opts.dataset][1] if opts.dataset in DATASETS else 2)
    data, _ = extract_data(manifest_path, extractors, class_names(opts), n_spk, opts.cache or out + ".cache",
                           progress=progress, log=log)
    save_native(data, out)
    return data


def extract_data(manifest_path: str, extractors: dict, names: Sequence[str], n_spk: int, cache_dir: str, *,
                 progress=None, log=print):
    """(the manifest's features as MERData, the Manifest), through ``extractors`` ({"t", "a", "v"}),
    with ``names`` as the classes and at most ``n_spk`` speakers per dialogue."""
    audio_missing = isinstance(extractors["a"], Missing)
    visual_missing = isinstance(extractors["v"], Missing)
    manifest = read_manifest(manifest_path, need_audio=not audio_missing, need_video=not visual_missing)
    names = tuple(names)
    manifest.check_speakers(n_spk)
    labels = _labels(manifest, names)
    cache = Cache(cache_dir)
    utts = manifest.utterances
    feats: Dict[str, List[np.ndarray]] = {}
    for m in MODALITIES:
        ex = extractors[m]
        desc = ex.describe()
        keys = [cache_key(desc, u, m) for u in utts]
        rows: List[Optional[np.ndarray]] = [cache.get(m, k) for k in keys]
        todo = [i for i, r in enumerate(rows) if r is None or r.shape != (desc["dim"],)]
        if todo and not isinstance(ex, Missing):
            bar = progress(f"{m}: {desc['name']}", len(todo)) if progress else None
            step = getattr(ex, "batch_size", 1)
            for s in range(0, len(todo), step):
                chunk = todo[s:s + step]
                x = ex([utts[i] for i in chunk])
                for i, row in zip(chunk, x):
                    cache.put(m, keys[i], row)
                    rows[i] = row
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        elif todo:
            for i in todo:
                rows[i] = ex([utts[i]])[0]
        feats[m] = rows
        done = len(utts) - len(todo)
        if done and not isinstance(ex, Missing):
            log(f"{m}: {done} of {len(utts)} utterances read back from the cache")
    notes = []
    truncated = getattr(extractors["t"], "truncated", 0)
    if truncated:
        notes.append(f"{truncated} transcript(s) longer than the text encoder's maximum were truncated")
        log(f"text: {truncated} of {len(utts)} transcripts truncated to the encoder's maximum")
    if isinstance(extractors["a"], OpenSmileFunctionals):
        notes.append(OpenSmileFunctionals.LICENCE)
        log(f"audio: {OpenSmileFunctionals.LICENCE}")
    dialogues, splits, at = {}, {"train": [], "valid": [], "test": []}, 0
    for name, rows in manifest.dialogues.items():
        n = len(rows)
        spk = np.asarray(manifest.speaker_ids(name), dtype=np.int64)
        arrays = [np.stack(feats[m][at:at + n]).astype(np.float32) for m in MODALITIES]
        dialogues[name] = Dialogue(name, *arrays, spk, np.asarray(labels[name], dtype=np.int64))
        splits[rows[0].split].append(name)
        at += n
    meta = {m: extractors[m].describe() for m in MODALITIES}
    data = MERData(dialogues=dialogues, splits={k: v for k, v in splits.items() if v}, class_names=names,
                   num_speakers=n_spk, dataset="custom", layout="native",
                   notes=notes + [f"extracted from {os.path.basename(manifest_path)}"], extractors=meta)
    return data, manifest


IGNORED_KEYS = ("revision", "package_version")


def check_same_extractors(trained: dict, data: dict) -> None:
    """Where both the checkpoint and the feature file record their extractors, they must agree
    (a revision or package version aside): a modality made otherwise is a one-line error."""
    if not trained or not data:
        return
    for m in MODALITIES:
        a, b = trained.get(m) or {}, data.get(m) or {}
        diff = sorted(k for k in set(a) | set(b) if k not in IGNORED_KEYS and a.get(k) != b.get(k))
        if diff:
            shown = ", ".join(f"{k} {b.get(k)!r} where the checkpoint's had {a.get(k)!r}" for k in diff)
            raise ManifestError(f"{MODALITY_LONG[m]}: the data's features were made by another extractor than the "
                                f"checkpoint's training features ({shown}); use features made as they were")


def rebuild_extractors(described: dict, device: Optional[str] = None, batch_size: int = 16) -> dict:
    """The extractors a feature file (or a checkpoint trained on one) records, built again; one
    whose description no longer matches what it builds (a model changed at its path) is an error."""
    if not isinstance(described, dict) or set(described) != set(MODALITIES):
        raise ManifestError("the checkpoint records no feature extractors: it was trained on features made "
                            "elsewhere (the lineage's pickles, synthetic data, or a file from before `cmath-fast "
                            "features extract`), which cannot be made again from raw recordings; predict on a "
                            "feature file of the same kind with --data")
    out = {}
    for m in MODALITIES:
        d = described[m]
        kind = d.get("name")
        if kind == "none":
            ex = Missing(MODALITY_LONG[m], int(d["dim"]))
        elif kind == "transformers-text":
            ex = TextEncoder(d["model"], d.get("pooling", "cls"), device, batch_size, d.get("max_length"))
        elif kind == "opensmile":
            ex = OpenSmileFunctionals(d["feature_set"])
        elif kind == "transformers-speech":
            ex = SpeechEncoder(d["model"], device)
        elif kind == "transformers-image":
            ex = ImageEncoder(d["model"], int(d.get("frames", 8)), device)
        else:
            raise ManifestError(f"{MODALITY_LONG[m]}: the checkpoint's extractor {kind!r} is not one this "
                                f"cmath-fast can run")
        now = ex.describe()
        changed = [k for k in now if k not in IGNORED_KEYS and now.get(k) != d.get(k)]
        if changed:
            raise ManifestError(f"{MODALITY_LONG[m]}: the extractor built from the checkpoint's record differs in "
                                f"{', '.join(changed)} ({', '.join(f'{now.get(k)!r} vs {d.get(k)!r}' for k in changed)})")
        out[m] = ex
    return out
