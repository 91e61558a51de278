"""Checks and randomness shared by the fused ops."""

from __future__ import annotations

import torch

from ..kernels._common import interpreting

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def kernel_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in KERNEL_DTYPES:
        raise TypeError(f"{name}: the fused kernels take float16, bfloat16 or float32, got {t.dtype} "
                        f"(use the reference op for other dtypes)")


def check_device(name: str, t: torch.Tensor) -> None:
    if t.device.type == "cuda":
        return
    if t.device.type == "cpu" and interpreting():
        return
    raise ValueError(f"{name}: the fused kernels need a CUDA tensor (or TRITON_INTERPRET=1 for CPU "
                     f"tensors, slowly), got a tensor on {t.device}")


def philox_seed(device) -> torch.Tensor:
    """A Philox seed (1,) int64 drawn on ``device`` from torch's generator for that device:
    ``torch.manual_seed`` reproduces it, it never crosses to the host (no synchronisation), and a
    CUDA graph that captured the draw draws anew on every replay."""
    return torch.randint(0, 2 ** 31 - 1, (1,), device=device, dtype=torch.int64)


def autocast_dtype(device_type: str):
    """The dtype ``torch.autocast`` casts matmul inputs to on this device type, or None when off."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        enabled = torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()
    if not enabled:
        return None
    try:
        return torch.get_autocast_dtype(device_type)
    except AttributeError:  # torch < 2.4
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" else torch.get_autocast_cpu_dtype()


def float_promotion(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    """``torch.promote_types`` for two floating dtypes, in Python (no dispatcher call; traceable)."""
    if a == b:
        return a
    return torch.float64 if torch.float64 in (a, b) else torch.float32


def mm_fp32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b (2-d, or batched 3-d) with an fp32 result: on CUDA 16-bit inputs accumulate into an
    fp32 output directly (``torch.mm``/``torch.bmm`` with ``out_dtype``); elsewhere the inputs are
    upcast. For weight gradients handed to fp32 master weights without a 16-bit round trip."""
    if a.dtype == b.dtype == torch.float32:
        return a @ b
    if a.is_cuda:
        try:
            return (torch.bmm if a.dim() == 3 else torch.mm)(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):
            pass
    return a.float() @ b.float()


def autocast_inputs(first: torch.Tensor, *rest):
    """Inside ``torch.autocast``, floating tensors (and lists of them) cast to the autocast dtype,
    as matmul-class ops cast their inputs; outside, returned unchanged. Returns (first, *rest)."""
    dtype = autocast_dtype(first.device.type) if isinstance(first, torch.Tensor) else None
    if dtype is None:
        return (first,) + rest

    def cast(t):
        if isinstance(t, (list, tuple)):
            return type(t)(cast(x) for x in t)
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
            return t.to(dtype)
        return t
    return (cast(first),) + tuple(cast(t) for t in rest)
