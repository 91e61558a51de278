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


def philox_seed() -> int:
    """A Philox seed drawn from torch's default CPU generator: ``torch.manual_seed`` reproduces
    it, and drawing it never synchronises with a GPU."""
    return int(torch.randint(0, 2 ** 31 - 1, (1,)).item())
