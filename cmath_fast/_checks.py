"""Input checks shared by the reference, the ops and the model: one clear error per problem.

Checks on shapes, dtypes and devices always run. Checks that need the values of a tensor (lengths
in range, speakers and labels in range) read them only when the tensor lives on the CPU or when
``CMATH_FAST_CHECKS=1``: on a GPU they would synchronise the host and break CUDA-graph capture.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


_SKIP_VALUE_CHECKS = [False]


def value_checks_enabled(t: torch.Tensor) -> bool:
    if _SKIP_VALUE_CHECKS[0]:
        return False
    return t.device.type == "cpu" or os.environ.get("CMATH_FAST_CHECKS", "0") == "1"


class skip_value_checks:
    """Within this context, checks that read tensor values are skipped, as on a GPU (used by the
    device-op counter so that a CPU count matches what a GPU step launches)."""

    def __enter__(self):
        self._prev = _SKIP_VALUE_CHECKS[0]
        _SKIP_VALUE_CHECKS[0] = True

    def __exit__(self, *exc):
        _SKIP_VALUE_CHECKS[0] = self._prev
        return False


def check_tensor(name: str, t, *, ndim: Optional[int] = None, floating: bool = False,
                 integer: bool = False, dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dims, got shape {tuple(t.shape)}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got {t.dtype}")
    if integer and t.dtype not in _INT_DTYPES:
        raise TypeError(f"{name}: expected an integer tensor, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")


def check_lengths(name: str, lengths, batch: int, max_len: int) -> None:
    check_tensor(name, lengths, ndim=1, integer=True)
    if lengths.shape[0] != batch:
        raise ValueError(f"{name}: expected shape ({batch},), got {tuple(lengths.shape)}")
    if value_checks_enabled(lengths) and lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0 or hi > max_len:
            raise ValueError(f"{name}: expected values in [0, {max_len}], got min {lo}, max {hi}")


def check_index_range(name: str, values: torch.Tensor, valid: torch.Tensor, upper: int) -> None:
    """values at ``valid`` positions must lie in [0, upper)."""
    if not value_checks_enabled(values):
        return
    picked = values[valid]
    if picked.numel():
        lo, hi = int(picked.min()), int(picked.max())
        if lo < 0 or hi >= upper:
            raise ValueError(
                f"{name}: expected values in [0, {upper - 1}] at valid positions, got min {lo}, max {hi}")
