"""Atomic file writes and safetensors checkpoints (weights + JSON metadata, never pickle)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Dict, Tuple

import torch

CHECKPOINT_KEY = "cmath_fast_checkpoint"


def atomic_write(path: str, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync, then rename over ``path``: a reader
    sees the old file or the new one, never a half-written one. The temp file is removed if
    anything fails."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
