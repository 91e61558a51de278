"""The hardware floor of a benchmark row: the time its work takes at a GPU's measured peaks.

floor = max(FLOPs / dense peak, bytes / bandwidth) for an op (roofline). A training step adds
its optimiser pass (a separate, bandwidth-bound kernel) to the GEMM time. The FLOPs and bytes are
those of the valid (unpadded) rows. Peaks, measured on this project's lent machines (bf16 dense
8192^3 matrix product; device-to-device copy, bytes read + written), 2026-10/11:
    H200: 788-798 TFLOP/s bf16, 4.3 TB/s      H100: 798 TFLOP/s bf16, 3.0 TB/s
Add a GPU by its measured numbers and their source.
"""

from __future__ import annotations

from typing import Optional, Sequence

# name fragment -> (bf16 dense FLOP/s, bytes/s)
PEAKS = {
    "H200": (790e12, 4.3e12),
    "H100": (798e12, 3.0e12),
}


def peaks(gpu_name: str):
    """(FLOP/s, bytes/s) of a GPU by its name, or None when it is not in the table."""
    for key, value in PEAKS.items():
        if key.lower() in str(gpu_name).lower():
            return value
    return None


def floor_us(gpu_name: str, flops: Optional[float] = None, nbytes: Optional[float] = None,
             serial_bytes: float = 0.0) -> float:
    """The floor in µs: max(flops / peak, nbytes / bandwidth) + serial_bytes / bandwidth (a pass
    that cannot overlap the rest, e.g. the optimiser's). NaN for a GPU without measured peaks."""
    p = peaks(gpu_name)
    if p is None or (not flops and not nbytes and not serial_bytes):
        return float("nan")
    flop_s, byte_s = p
    t = max((flops or 0.0) / flop_s, (nbytes or 0.0) / byte_s) + serial_bytes / byte_s
    return t * 1e6


def model_step_work(n_params: int, lengths: Sequence[int], train: bool, weight_bytes: int = 2):
    """(FLOPs, bytes, serial optimiser bytes) of a CMATH step on the valid rows: every parameter
    is used once per utterance (2 FLOPs a multiply-add; x3 with the backward); the weights are read
    once; Adam reads and writes weights, gradients and two fp32 moments (16 bytes a parameter)."""
    n_rows = sum(int(n) for n in lengths)
    flops = (6.0 if train else 2.0) * n_params * n_rows
    nbytes = float(weight_bytes * n_params)
    serial = 16.0 * n_params if train else 0.0
    return flops, nbytes, serial

