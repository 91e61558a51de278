"""The run folder's safety: one run per folder (a lock file), stale temporary files cleaned, and
the check that ``--resume`` continues the same run."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import socket
import time
from typing import Dict, List, Optional

from ..config import CMATHConfig
from ..data.dataset import describe_fingerprint
from ..io import atomic_write_text
from .options import TrainOptions

LOCK_NAME = ".lock"
_HELD: Dict[str, int] = {}  # lock paths this process holds -> nesting depth

# Options that may change on resume: they do not change what the run computes (the backend and its
# fused components change its speed and, in training, its random stream: a resume says so).
RESUME_FREE_OPTIONS = {"epochs", "device", "backend", "fused", "resume", "override", "progress", "precision",
                       "cuda_graphs", "device_data", "devices", "deterministic", "overwrite", "data_fingerprint",
                       "stop_after_epoch", "protocol_overrides"}


class RunLockedError(RuntimeError):
    """Another run writes into this folder."""


class ResumeMismatchError(ValueError):
    """--resume was given settings that differ from the run it would continue."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """Held while a run writes into ``out_dir``: a second run into the same folder is refused with
    one line naming the holder. A lock left by a process that is gone (same host, pid not alive)
    is stale and taken over. Re-entrant within one process (``train`` holds it around each seed's
    ``train_one``)."""

    def __init__(self, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(os.path.abspath(out_dir), LOCK_NAME)

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def __enter__(self):
        if self.path in _HELD:
            _HELD[self.path] += 1
            return self
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder and holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) \
                        and not _alive(holder["pid"]):
                    os.unlink(self.path)  # stale: its process is gone
                    continue
                if holder is None:  # unreadable (being written this instant, or corrupt)
                    raise RunLockedError(f"{os.path.dirname(self.path)} is locked by {self.path} "
                                         f"(unreadable); remove it if no run is writing there")
                raise RunLockedError(
                    f"{os.path.dirname(self.path)} is in use by run pid {holder.get('pid')} on host "
                    f"{holder.get('host')} since {holder.get('since')}; use another --out (or remove "
                    f"{self.path} if that run is gone)")
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(me, fh)
            _HELD[self.path] = 1
            return self
        raise RunLockedError(f"{self.path}: could not take the lock")

    def __exit__(self, *exc):
        _HELD[self.path] -= 1
        if _HELD[self.path] == 0:
            del _HELD[self.path]
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        return False


def clean_stale_temps(out_dir: str) -> List[str]:
    """Remove the temporary files an interrupted atomic write left (``.<name>.*.tmp``); only
    called under the run lock, so no live write owns them."""
    removed = []
    for path in glob.glob(os.path.join(out_dir, ".*.tmp")):
        try:
            os.unlink(path)
            removed.append(os.path.basename(path))
        except OSError:
            pass
    return removed


def resume_differences(stored_cfg: dict, stored_opts: dict, cfg: CMATHConfig, opts: TrainOptions,
                       done_epochs: int) -> List[str]:
    """What differs between a stored run and the settings given to continue it, one phrase per
    difference. Fields the stored run predates compare through their defaults."""
    diffs = []
    old_cfg = CMATHConfig.from_dict(stored_cfg).to_dict()
    new_cfg = cfg.to_dict()
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"config {key} {old_cfg.get(key)!r} -> {new_cfg.get(key)!r}")
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    old_opts = {**dataclasses.asdict(TrainOptions()), **{k: v for k, v in stored_opts.items() if k in known}}
    new_opts = dataclasses.asdict(opts)
    for key in sorted(known - RESUME_FREE_OPTIONS):
        a, b = old_opts.get(key), new_opts.get(key)
        if isinstance(a, list):
            a = tuple(a)
        if a != b:
            diffs.append(f"{key} {a!r} -> {b!r}")
    if opts.epochs < done_epochs:
        diffs.append(f"epochs {opts.epochs} < the {done_epochs} already trained")
    old_fp, new_fp = stored_opts.get("data_fingerprint"), opts.data_fingerprint
    # the content and the splits decide; a file moved or renamed is the same data. A run made before
    # fingerprints were recorded compares nothing.
    if old_fp and new_fp and (old_fp.get("sha256"), old_fp.get("splits")) != (new_fp.get("sha256"), new_fp.get("splits")):
        diffs.append(f"data {describe_fingerprint(old_fp)} -> {describe_fingerprint(new_fp)}")
    return diffs


RUN_FILES = ("metrics.json", "config.json", "history.csv", "best.safetensors", "last.safetensors", "curves.png",
             "confusion.png", "resume-overrides.json", "sweep.csv", "sweep.md")


def remove_run_files(out_dir: str) -> List[str]:
    """Remove a run's own files (``RUN_FILES``, in the folder and its seedK/ folders; nothing
    else): what --overwrite replaces. -> the paths removed."""
    removed = []
    folders = [out_dir] + sorted(os.path.join(out_dir, n) for n in os.listdir(out_dir)
                                 if n.startswith("seed") and os.path.isdir(os.path.join(out_dir, n)))
    for folder in folders:
        for name in RUN_FILES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                os.unlink(path)
                removed.append(path)
        if folder != out_dir and not os.listdir(folder):
            os.rmdir(folder)
    return removed


def existing_run(out_dir: str) -> Optional[str]:
    """What run a folder already holds ("a finished run", "an unfinished run ..."), or None."""
    for sub in [""] + sorted(n for n in (os.listdir(out_dir) if os.path.isdir(out_dir) else [])
                             if n.startswith("seed")):
        folder = os.path.join(out_dir, sub)
        if os.path.isfile(os.path.join(folder, "metrics.json")):
            return "a finished run (metrics.json)"
        if os.path.isfile(os.path.join(folder, "sweep.csv")):
            return "a sweep (sweep.csv)"
        if os.path.isfile(os.path.join(folder, "last.safetensors")):
            return "an unfinished run (last.safetensors)"
    return None


def record_override(out_dir: str, diffs: List[str]) -> None:
    """Append what ``--resume --override`` changed to ``resume-overrides.json`` in the run folder."""
    path = os.path.join(out_dir, "resume-overrides.json")
    entries = []
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as fh:
                entries = json.load(fh)
        except (OSError, ValueError):
            entries = []
    entries.append({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": diffs})
    atomic_write_text(path, json.dumps(entries, indent=2))
