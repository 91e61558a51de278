"""Seeds and sweep cells in parallel, one process per device (``--devices``).

Each worker process takes one device for its lifetime (a GPU, or on a machine without GPUs a CPU
share: ``cpu:N`` starts N processes, each with its share of the cores' threads) and trains the
runs it is handed one after another, each into its own folder under its own lock, exactly as a
sequential run would (``train_one``: the same seeds give the same results). A run that fails
does not stop the others; the caller learns which failed and why.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import Callable, List, Optional, Sequence, Tuple

import torch


def parse_devices(spec: Optional[str]) -> List[str]:
    """``--devices``: "auto" (every visible GPU), "0,1" or "cuda:0,cuda:1" (those GPUs), "cpu:N" (N CPU
    processes) -> the device of each worker process. A one-line error names what is wrong."""
    if spec is None:
        return []
    spec = spec.strip().lower()
    if spec == "auto":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError("--devices auto: no GPU is visible; give cpu:N for N CPU processes")
        return [f"cuda:{i}" for i in range(n)]
    if spec.startswith("cpu"):
        _, _, n = spec.partition(":")
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--devices {spec}: expected cpu:N with N >= 1 processes")
        return ["cpu"] * int(n)
    out = []
    for part in spec.split(","):
        part = part.strip()
        idx = part[5:] if part.startswith("cuda:") else part
        if not idx.isdigit():
            raise ValueError(f"--devices: {part!r} is not a GPU index (expected auto, 0,1,... or cpu:N)")
        if not torch.cuda.is_available() or int(idx) >= torch.cuda.device_count():
            visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
            raise ValueError(f"--devices: GPU {idx} is not visible ({visible} visible)")
        out.append(f"cuda:{int(idx)}")
    if len(set(out)) != len(out):
        raise ValueError(f"--devices {spec}: a GPU is named twice")
    return out


_WORKER = {}


def _init_worker(devices, threads, data):
    """Each worker takes the next free device of the shared queue, for its lifetime."""
    _WORKER["device"] = devices.get()
    _WORKER["data"] = data
    torch.set_num_threads(threads)


def _run(tag: str, cfg_dict: dict, opts_dict: dict, out_dir: str):
    from ..config import CMATHConfig
    from .loop import train_one
    from .options import TrainOptions
    device = _WORKER["device"]
    opts = TrainOptions(**dict(opts_dict, device=device if device != "cpu" else "cpu"))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))

    def log(msg):
        print(f"[{tag} on {device}] {msg}", flush=True)
    try:
        return tag, train_one(CMATHConfig.from_dict(cfg_dict), _WORKER["data"], opts, out_dir, log), None
    except BaseException as exc:  # reported to the parent, which keeps the other runs going
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if os.environ.get("CMATH_FAST_DEBUG") == "1":
            detail += "\n" + traceback.format_exc()
        return tag, None, f"{type(exc).__name__}: {detail}"


def run_parallel(runs: Sequence[Tuple[str, object, object, str]], data, devices: Sequence[str],
                 log: Callable[[str], None] = print) -> Tuple[dict, dict]:
    """``runs``: (tag, config, TrainOptions, folder) each -> ({tag: result}, {tag: error}) once all
    have finished; one worker process per entry of ``devices``."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    queue = ctx.Queue()
    for d in devices:
        queue.put(d)
    n_cpu = sum(d == "cpu" for d in devices)
    threads = max(1, (os.cpu_count() or 1) // max(n_cpu, 1)) if n_cpu else max(1, torch.get_num_threads())
    results, errors = {}, {}
    with ProcessPoolExecutor(max_workers=len(devices), mp_context=ctx, initializer=_init_worker,
                             initargs=(queue, threads, data)) as pool:
        futures = [pool.submit(_run, tag, cfg.to_dict(), asdict(opts), folder) for tag, cfg, opts, folder in runs]
        for fut in as_completed(futures):
            tag, result, error = fut.result()
            if error is None:
                results[tag] = result
                log(f"{tag}: done")
            else:
                errors[tag] = error
                log(f"{tag}: failed: {error}")
    return results, errors
