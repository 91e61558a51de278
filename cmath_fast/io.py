"""Atomic file writes and safetensors checkpoints (weights + JSON metadata, never pickle)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from typing import Dict, Tuple

import torch

CHECKPOINT_KEY = "cmath_fast_checkpoint"


class OutputPathError(ValueError):
    """An output path that cannot be written as a regular file; the message says why."""


_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _link_chain(path: str):
    """``path`` and every path its symlinks lead to (absolute)."""
    seen = [os.path.abspath(path)]
    for _ in range(40):
        current = seen[-1]
        if not os.path.islink(current):
            break
        seen.append(os.path.abspath(os.path.join(os.path.dirname(current), os.readlink(current))))
    return seen


def output_file(path: str) -> str:
    """The file to write for an output path: a symlink's target; refused in one line when the path
    exists and is not a regular file (a device, a FIFO, a folder, or a symlink to one), names a
    process's open file (/dev/stdout, /proc/self/fd/N: renaming over it would replace whatever
    file the stream goes to), or when its folder is not a folder. Writers replace regular files
    only, never what a path names."""
    path = os.fspath(path)
    if any(p.startswith(("/proc/", "/dev/fd/")) for p in _link_chain(path)):
        raise OutputPathError(f"{path}: a stream of this process, not a file path; give a file path to write"
                              + (" (predict writes to stdout with --out -)" if path.startswith("/dev/") else ""))
    target = os.path.realpath(path) if os.path.islink(path) else path
    if os.path.exists(target):
        mode = os.stat(target).st_mode
        if not stat.S_ISREG(mode):
            via = f" (a link to {target})" if target != path else ""
            raise OutputPathError(f"{path}{via}: {_kind(mode)}, not a regular file; give a file path to write")
    directory = os.path.dirname(os.path.abspath(target))
    parent = directory
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputPathError(f"{path}: {parent} is not a folder")
    return target


def output_folder(path: str) -> str:
    """An output folder (a run's ``--out``): refused in one line when it exists and is not a folder."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputPathError(f"{path}: {_kind(os.stat(path).st_mode)}, not a folder; give a folder for the run")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputPathError(f"{path}: {parent} is not a folder")
    return path


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``: a reader
    sees the old file or the new one, never a half-written one. The temp file is removed if
    anything fails. Only regular files are replaced (``output_file``); a symlink's target is."""
    shown = os.fspath(path)
    path = output_file(shown)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    except OSError as exc:  # the target named, not the temp file
        raise OSError(exc.errno, f"{shown}: cannot write there ({exc.strerror})") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"{shown}: cannot write there ({exc.strerror})") from None
        raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write(path, text.encode("utf-8"))


def save_checkpoint(path: str, tensors: Dict[str, torch.Tensor], meta: dict) -> None:
    from safetensors.torch import save

    def own(t):  # a view into a larger buffer (tied, stacked parameters) gets its own storage
        t = t.detach().cpu().contiguous()
        return t.clone() if t.untyped_storage().nbytes() != t.numel() * t.element_size() else t
    flat = {k: own(v) for k, v in tensors.items()}
    atomic_write(path, save(flat, metadata={CHECKPOINT_KEY: json.dumps(meta)}))


def load_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"{path}: a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        with safe_open(path, framework="pt") as fh:
            meta = (fh.metadata() or {}).get(CHECKPOINT_KEY)
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: unreadable checkpoint ({exc})") from None
    if meta is None:
        raise ValueError(f"{path}: not a cmath-fast checkpoint (no {CHECKPOINT_KEY} metadata)")
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt checkpoint metadata ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: corrupt checkpoint metadata (not a JSON object)")
    return tensors, meta
