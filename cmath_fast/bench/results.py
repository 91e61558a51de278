"""Benchmark results as data: one CSV schema, a writer that appends, a reader."""

from __future__ import annotations

import csv
import datetime as _dt
import os
import re
from typing import Dict, List

HEADER = ["op", "shape", "mode", "dtype", "provider", "median_us", "p20_us", "p80_us", "tflops",
          "gbps", "peak_mb", "gpu", "torch", "triton", "date", "floor_us", "items_per_s"]
# Older schemas, still read: before floor_us (v1) and before items_per_s (v2); missing fields NaN.
HEADER_V1 = HEADER[:-2]
HEADER_V2 = HEADER[:-1]
# items_per_s: dialogues per second for the epoch rows (cmath_train_epoch, cmath_eval_epoch).


def environment() -> Dict[str, str]:
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {"gpu": gpu, "torch": torch.__version__, "triton": triton_version,
            "date": _dt.date.today().isoformat()}


def default_csv_path(root: str = "bench/results") -> str:
    env = environment()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]).strip("-").lower()
    return os.path.join(root, f"{slug}-{env['date']}.csv")


def append_row(path: str, row: Dict[str, object]) -> None:
    """Append one result (missing environment fields filled in); writes the header to a new file."""
    # NaN: a GPU without measured peaks; a row that is not an epoch
    full = dict(environment(), floor_us=float("nan"), items_per_s=float("nan"))
    full.update({k: v for k, v in row.items() if v is not None})
    missing = [k for k in HEADER if k not in full]
    if missing:
        raise ValueError(f"benchmark row lacks {missing}")
    unknown = [k for k in full if k not in HEADER]
    if unknown:
        raise ValueError(f"benchmark row has unknown fields {unknown}; the schema is {HEADER}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    if not new:
        with open(path, newline="", encoding="utf-8") as fh:
            if next(csv.reader(fh), None) != HEADER:
                raise ValueError(f"{path}: an older benchmark schema; write new rows to another file")
    with open(path, "a", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=HEADER)
        if new:
            writer.writeheader()
        writer.writerow({k: _fmt(full[k]) for k in HEADER})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def read_rows(path: str) -> List[Dict[str, object]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames not in (HEADER, HEADER_V1, HEADER_V2):
            raise ValueError(f"{path}: header {reader.fieldnames} is not the benchmark schema {HEADER}")
        rows = []
        for r in reader:
            for k in ("median_us", "p20_us", "p80_us", "tflops", "gbps", "peak_mb", "floor_us", "items_per_s"):
                r[k] = float(r[k]) if r.get(k) not in ("", None) else float("nan")
            rows.append(r)
        return rows
