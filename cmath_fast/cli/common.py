"""What the command modules share: the one-line error type and data loading."""

from __future__ import annotations

import os

import torch


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def load_data(args):
    from ..data import load_features, make_synthetic
    if getattr(args, "data", None):
        return load_features(args.data)
    preset = getattr(args, "synthetic", None) or getattr(args, "dataset", None) or "small"
    return make_synthetic(preset, seed=0)


def use_interpreter_without_cuda() -> None:
    """Fused kernels on a machine without CUDA run in Triton's interpreter (set before import)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
