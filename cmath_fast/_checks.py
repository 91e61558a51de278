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


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def value_checks_enabled(t: torch.Tensor) -> bool:
    """Checks that read tensor values run on CPU tensors (or everywhere with CMATH_FAST_CHECKS=1),
    never while torch.compile traces (a value read there is a data-dependent guard)."""
    if _SKIP_VALUE_CHECKS[0] or _compiling():
        return False
    if t.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return False  # a host read inside a CUDA-graph capture is an error
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


def check_finite(name: str, values: torch.Tensor, valid: torch.Tensor) -> None:
    """No NaN or inf at ``valid`` positions (B, L) of (B, L, ...) values (padding may hold anything)."""
    if not value_checks_enabled(values):
        return
    bad = ~torch.isfinite(values[valid])
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(-1)
        b, i = (int(v) for v in torch.nonzero(valid)[int(torch.nonzero(rows)[0])])
        raise ValueError(f"{name}: NaN or inf in {int(rows.sum())} valid utterance(s), the first at dialogue {b}, "
                         f"utterance {i}; clean or impute the features")


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


def check_streams(q, ks, vs, kv_lengths, gates, dropout_mask) -> int:
    """The streams of a multi-stream attention call (see ``cross_modal_attention_ref``): the same
    count of keys, values and key lengths, each shaped like q; returns that count S."""
    check_tensor("q", q, ndim=4, floating=True)
    B, Lq, H, dh = q.shape
    if not isinstance(ks, (list, tuple)) or not isinstance(vs, (list, tuple)):
        raise TypeError("ks and vs must be lists of tensors, one per stream")
    S = len(ks)
    if S < 1 or len(vs) != S or len(kv_lengths) != S:
        raise ValueError(
            f"expected the same number (>= 1) of streams in ks, vs and kv_lengths, got "
            f"{len(ks)}, {len(vs)}, {len(kv_lengths)}")
    for s in range(S):
        for name, t in ((f"ks[{s}]", ks[s]), (f"vs[{s}]", vs[s])):
            check_tensor(name, t, ndim=4, floating=True, dtype=q.dtype, device=q.device)
            if t.shape[0] != B or t.shape[2] != H or t.shape[3] != dh:
                raise ValueError(
                    f"{name}: expected shape (B={B}, Lk, H={H}, dh={dh}), got {tuple(t.shape)}")
        if vs[s].shape[1] != ks[s].shape[1]:
            raise ValueError(
                f"vs[{s}]: expected Lk={ks[s].shape[1]} as ks[{s}], got {vs[s].shape[1]}")
        check_lengths(f"kv_lengths[{s}]", kv_lengths[s], B, ks[s].shape[1])
    if gates is not None:
        check_tensor("gates", gates, ndim=4, floating=True, device=q.device)
        if tuple(gates.shape) != (B, Lq, S, H):
            raise ValueError(f"gates: expected shape {(B, Lq, S, H)}, got {tuple(gates.shape)}")
    if dropout_mask is not None:
        if len(dropout_mask) != S:
            raise ValueError(f"dropout_mask: expected {S} tensors, got {len(dropout_mask)}")
        for s, m in enumerate(dropout_mask):
            want = (B, H, Lq, ks[s].shape[1])
            if tuple(m.shape) != want:
                raise ValueError(f"dropout_mask[{s}]: expected shape {want}, got {tuple(m.shape)}")
    return S
