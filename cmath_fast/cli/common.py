"""What the command modules share: the one-line error type and data loading."""

from __future__ import annotations

import os

import torch


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def check_device_flag(device: str, flag: str = "--device") -> None:
    """A device this machine has, or a one-line error naming the flag."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise CLIError(f"{flag} {device!r}: not a device; expected cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return
    if dev.type != "cuda":
        raise CLIError(f"{flag} {device}: cmath-fast runs on cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise CLIError(f"{flag} {device}: CUDA is not available here (torch {torch.__version__}); use {flag} cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"{flag} {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                       f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")


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


def add_fused_argument(parser) -> None:
    """``--fused``: the triton backend's components that run fused (``cmath_fast.components``)."""
    from ..components import COMPONENTS, ENV_VAR
    parser.add_argument("--fused", default="all", metavar="LIST",
                        help=f"the triton backend's components that run fused: a comma-separated subset of "
                             f"{','.join(COMPONENTS)}, or all (default), or none; the others run the "
                             f"reference's code (same weights, same results); {ENV_VAR} wins over this")


def fused_arg(args) -> str:
    """The --fused set with CMATH_FAST_FUSED applied, as a run records it (checked: one line)."""
    from ..components import format_fused, resolve_fused
    return format_fused(resolve_fused(args.fused, "--fused"))
