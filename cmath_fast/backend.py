"""Backend selection — "torch" (the reference), "triton" (fused kernels), "auto" — and the
capability rules of a device, in one place.

``CMATH_FAST_BACKEND`` in the environment overrides the argument. ``auto`` picks triton on an
NVIDIA GPU of compute capability 8.0 or newer (Triton's documented NVIDIA floor) when Triton
imports, and torch otherwise: below 8.0, on ROCm (the kernels are untested there) and on the CPU.
An explicit "triton" also runs below 8.0 and on ROCm, with a one-line warning, and on the CPU
under Triton's interpreter (``TRITON_INTERPRET=1``, slow: for tests). bf16 is native from
capability 8.0: below it the automatic precision is fp16-mixed and an explicit bf16 mode is an
error (``check_device_precision``). ``cmath-fast env`` shows the rules applied to this device.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "CMATH_FAST_BACKEND"

# Triton documents NVIDIA support from compute capability 8.0 and has no constant to read: below it
# `auto` runs the reference. bf16 (storage, arithmetic and tensor cores) is native from 8.0 too.
MIN_TRITON_CAPABILITY = (8, 0)
MIN_BF16_CAPABILITY = (8, 0)


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says why."""


class UntestedDeviceWarning(UserWarning):
    """The fused kernels were asked for on a device they are not tested on."""


@dataclass(frozen=True)
class DeviceRules:
    """What the capability rules say of one device. ``platform``: "cpu", "cuda" or "rocm";
    ``capability``: (major, minor) on CUDA, None elsewhere (on ROCm torch reports a gfx version
    there, which is no compute capability); ``family``: the kernels' tile family
    (``kernels.configs.family_of``; empty on the CPU and ROCm); ``kernels_tested``: whether the
    fused kernels run here by default, with ``kernels_reason``; ``bf16``: bf16 is native;
    ``precision``: what ``--precision auto`` picks, with ``precision_reason``."""

    device: str
    platform: str
    name: str
    capability: Optional[Tuple[int, int]]
    family: str
    kernels_tested: bool
    kernels_reason: str
    bf16: bool
    precision: str
    precision_reason: str

    def describe(self) -> str:
        if self.platform == "cpu":
            return "CPU"
        if self.platform == "rocm":
            return f"{self.name} (ROCm)"
        major, minor = self.capability
        return f"{self.name} (sm_{major}{minor}, family {self.family or 'none'})"


def _cc(cap: Tuple[int, int]) -> str:
    return f"{cap[0]}.{cap[1]}"


def device_rules(device=None) -> DeviceRules:
    """The capability rules applied to ``device`` (a torch.device or string; default: the current
    CUDA device when there is one, else the CPU)."""
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" or not torch.cuda.is_available():
        return DeviceRules(str(dev), "cpu", "cpu", None, "", False, "no CUDA device", False, "fp32",
                           "fp32 on the CPU")
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    name = torch.cuda.get_device_name(index)
    if getattr(torch.version, "hip", None):
        bf16 = bool(torch.cuda.is_bf16_supported())
        return DeviceRules(str(dev), "rocm", name, None, "", False,
                           "ROCm: the fused kernels are not tested on AMD GPUs", bf16,
                           "bf16-mixed" if bf16 else "fp16-mixed",
                           "the GPU has bf16" if bf16 else "the GPU has no bf16")
    cap = tuple(torch.cuda.get_device_capability(index))
    try:
        from .ops.introspect import family_of
        family = family_of(*cap)
    except ImportError:  # no Triton: no kernels, no family
        family = ""
    tested = cap >= MIN_TRITON_CAPABILITY
    reason = (f"compute capability {_cc(cap)}" if tested else
              f"compute capability {_cc(cap)} is below {_cc(MIN_TRITON_CAPABILITY)}, Triton's NVIDIA floor "
              f"(no bf16 tensor cores; the kernels are untested there)")
    bf16 = cap >= MIN_BF16_CAPABILITY
    precision_reason = (f"bf16 is native from compute capability {_cc(MIN_BF16_CAPABILITY)}" if bf16 else
                        f"no native bf16 below compute capability {_cc(MIN_BF16_CAPABILITY)}: fp16-mixed with a "
                        f"gradient scaler (which keeps the training step out of CUDA graphs)")
    return DeviceRules(str(dev), "cuda", name, cap, family, tested, reason, bf16,
                       "bf16-mixed" if bf16 else "fp16-mixed", precision_reason)


def check_device_precision(precision: str, device) -> None:
    """An explicit bf16 mode on a device without native bf16 is refused in one line."""
    if precision in ("bf16", "bf16-mixed"):
        rules = device_rules(device)
        if rules.platform != "cpu" and not rules.bf16:
            raise ValueError(f"--precision {precision}: {rules.describe()} has no native bf16 "
                             f"(it needs compute capability {_cc(MIN_BF16_CAPABILITY)}); use fp16-mixed or fp32")


def triton_status() -> Tuple[bool, str]:
    """(usable when asked for explicitly, reason) for the fused Triton path on this machine."""
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed"
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


def resolve_backend(backend: str = "auto", device=None) -> Tuple[str, str]:
    """-> (concrete backend, reason) for ``device`` (default: the current CUDA device, if any).
    Raises BackendUnavailableError for an unusable "triton"; warns (``UntestedDeviceWarning``,
    one line) for an explicit "triton" on a GPU the kernels are not tested on."""
    choice = requested_backend(backend)
    ok, why = triton_status()
    if choice == "torch":
        return "torch", "requested"
    if choice == "triton":
        if not ok:
            raise BackendUnavailableError(f"backend 'triton' is unavailable: {why}; use backend='torch'")
        rules = device_rules(device)
        if rules.platform != "cpu" and not rules.kernels_tested:
            warnings.warn(f"backend 'triton' on {rules.describe()}: {rules.kernels_reason}; results are "
                          f"checked by `cmath-fast doctor` only", UntestedDeviceWarning, stacklevel=3)
        return "triton", why
    if not (ok and torch.cuda.is_available()):
        return "torch", f"auto: {why if not ok else 'no CUDA device (the interpreter is for tests only)'}"
    rules = device_rules(device)
    if not rules.kernels_tested:
        return "torch", f"auto: {rules.kernels_reason}"
    return "triton", f"{why}; {rules.kernels_reason}"
