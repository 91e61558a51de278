"""The tolerance rules, shared by the tests and ``cmath-fast doctor``.

- ``TOL``: (atol, rtol) of a fused op against a float64 reference, by the dtype of its inputs,
  where one fixed bound fits (fp16/bf16 with room for their rounding: bf16 keeps 8 bits of
  mantissa, and the interpreter truncates fp32 -> bf16 casts).
- The 2x rule (flash-attention's): the fused computation's error against an exact (float64)
  reference is at most twice PyTorch's own error at the same dtype, plus a floor of one rounding
  step of the dtype at the value's magnitude (under autocast every gradient comes back rounded to
  it) and at least ``MIN_FLOOR`` where PyTorch's error is ~0. ``two_x_ratio`` is the error over
  that bound: at most 1 passes.
"""

from __future__ import annotations

import torch

TOL = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (4e-3, 4e-3),
    torch.bfloat16: (3e-2, 3e-2),
}
UNIT_ROUNDOFF = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
MIN_FLOOR = 1e-5


def max_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """The largest absolute difference, in float64 (inf when ``actual`` has a non-finite value)."""
    diff = (actual.detach().double() - expected.detach().double()).abs()
    if not torch.isfinite(diff).all():
        return float("inf")
    return diff.max().item() if diff.numel() else 0.0


def two_x_bound(torch_error: float, exact: torch.Tensor, dtype: torch.dtype, min_floor: float = MIN_FLOOR) -> float:
    """2 x PyTorch's error + one rounding step of ``dtype`` at ``exact``'s magnitude (>= min_floor)."""
    magnitude = exact.detach().abs().max().item() if exact.numel() else 0.0
    return 2.0 * torch_error + max(min_floor, UNIT_ROUNDOFF[dtype] * magnitude)


def two_x_ratio(ours: torch.Tensor, torch_same_dtype: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype,
                min_floor: float = MIN_FLOOR) -> float:
    """Our error over the 2x rule's bound (<= 1 passes)."""
    return max_error(ours, exact) / two_x_bound(max_error(torch_same_dtype, exact), exact, dtype, min_floor)


__all__ = ["MIN_FLOOR", "TOL", "UNIT_ROUNDOFF", "max_error", "two_x_bound", "two_x_ratio"]
