"""Backend selection: "torch" (the reference), "triton" (fused kernels), "auto".

``CMATH_FAST_BACKEND`` in the environment overrides the argument. ``auto`` picks triton when
Triton imports and CUDA is available, and torch otherwise. An explicit "triton" also runs on the
CPU under Triton's interpreter (``TRITON_INTERPRET=1``, slow: for tests). ``cmath-fast env`` says
which backend ``auto`` picks and why.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Tuple

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "CMATH_FAST_BACKEND"

FUSED_LAYERS_IMPLEMENTED = True


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def triton_status() -> Tuple[bool, str]:
    """(usable when asked for explicitly, reason) for the fused Triton path on this machine."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
    if not FUSED_LAYERS_IMPLEMENTED:
        return False, "the fused Triton kernels are not implemented yet in this version"
    if torch.cuda.is_available():
        return True, "CUDA and Triton are available"
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        return True, "TRITON_INTERPRET=1: kernels run in Triton's CPU interpreter (slow)"
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU, slowly)"


def requested_backend(backend: str = "auto") -> str:
    """The backend asked for, after the environment override, checked against BACKENDS."""
    env = os.environ.get(ENV_VAR)
    choice = env if env else backend
    if choice not in BACKENDS:
        source = f"environment variable {ENV_VAR}" if env else "backend"
        raise ValueError(f"{source}: expected one of {BACKENDS}, got {choice!r}")
    return choice


def resolve_backend(backend: str = "auto") -> Tuple[str, str]:
    """-> (concrete backend, reason). Raises BackendUnavailableError for an unusable "triton"."""
    choice = requested_backend(backend)
    ok, why = triton_status()
    if choice == "torch":
        return "torch", "requested"
    if choice == "triton":
        if not ok:
            raise BackendUnavailableError(f"backend 'triton' is unavailable: {why}; use backend='torch'")
        return "triton", why
    if ok and torch.cuda.is_available():
        return "triton", why
    return "torch", f"auto: {why if not ok else 'no CUDA device (the interpreter is for tests only)'}"
