"""The GPU benchmark suite (pytest-benchmark). Without CUDA every benchmark is collected and
skipped with the reason. Results also go to a CSV (schema in cmath_fast.bench.results): set
CMATH_FAST_BENCH_CSV, else bench/results/<gpu>-<date>.csv."""

import os

import pytest
import torch

from cmath_fast.bench.results import append_row, default_csv_path


def pytest_configure(config):
    config.addinivalue_line("markers", "quick: the quick subset (R1/R2 d1024, every provider; the model step)")
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU")


HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):
    # Hooks in a conftest see every collected item: act on this folder's benchmarks only.
    for item in items:
        if not str(item.path).startswith(HERE + os.sep):
            continue
        item.add_marker(pytest.mark.cuda)
        if not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="GPU benchmark: no CUDA device on this machine"))


@pytest.fixture(scope="session")
def csv_path():
    return os.environ.get("CMATH_FAST_BENCH_CSV") or default_csv_path(os.path.join(HERE, "results"))


@pytest.fixture
def record(benchmark, csv_path):
    """record(run, row, flops, nbytes, serial_bytes, items): time ``run`` with do_bench, report it
    through pytest-benchmark's extra_info and a short pedantic run, and append the row to the CSV
    with its throughput, its hardware floor (cmath_fast.bench.roofline) and, for ``items``
    processed per call, items per second."""
    from cmath_fast.bench.timing import measure

    def _record(run, row, flops=None, nbytes=None, serial_bytes=0.0, items=None):
        from cmath_fast.bench.roofline import floor_us
        stats = measure(run)
        secs = stats["median_us"] * 1e-6
        if items is not None:  # the epoch rows: dialogues per second
            row = dict(row, items_per_s=items / secs)
        row = dict(row, **stats, tflops=(flops / secs / 1e12) if flops else float("nan"),
                   gbps=(nbytes / secs / 1e9) if nbytes else float("nan"),
                   floor_us=floor_us(torch.cuda.get_device_name(), flops, nbytes, serial_bytes))
        benchmark.extra_info.update({k: v for k, v in row.items()})
        benchmark.pedantic(lambda: (run(), torch.cuda.synchronize()), rounds=3, warmup_rounds=1)
        append_row(csv_path, row)
        return row
    return _record


@pytest.fixture
def record_kernels(record):
    """record_kernels(run, row, ...): the same row timed kernels-only — ``run`` captured in a CUDA
    graph and replayed (cmath_fast.bench.timing.graph_replay) — with " kernels" appended to its
    mode. A provider that cannot be captured gets no such row, with a warning that says why."""
    import warnings

    from cmath_fast.bench.timing import graph_replay

    def _record(run, row, **work):
        try:
            replay = graph_replay(run)
        except Exception as exc:  # a provider that syncs the host or otherwise cannot be captured
            warnings.warn(f"{row['provider']}: no kernels-only row ({type(exc).__name__}: {exc})"[:300])
            return None
        return record(replay, dict(row, mode=row["mode"] + " kernels"), **work)
    return _record
