"""``cmath-fast sweep``: a grid of settings x seeds, every run a ``train_one`` in its own folder
(``OUT/<cell>/seed<k>``), over the ``--devices`` pool when given, and one table of the mean ± std
of each cell (``OUT/sweep.csv`` and ``OUT/sweep.md``)."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from dataclasses import fields, replace
from typing import Dict, List, Sequence, Tuple

import numpy as np

from ..config import CMATHConfig
from ..io import atomic_write_text
from .options import TrainOptions

# The config's training defaults that a run's options carry (run_config writes the run's values back
# into its config.json): a grid over one of these varies the option, and the config records it.
SHARED = ("lr", "batch_size", "epochs", "weight_decay")
# Training options a grid may not vary: they say where and how a run is done, not what it learns.
NOT_SWEPT = {"device", "resume", "override", "progress", "overwrite", "data_fingerprint", "stop_after_epoch",
             "protocol_overrides", "devices", "cuda_graphs", "device_data"}


def _typed(key: str, current, text: str):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"--grid {key}: {text!r} is not true or false")
        return text.lower() in ("true", "1")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"--grid {key}: {text!r} is not an integer") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--grid {key}: {text!r} is not a number") from None
    if isinstance(current, tuple):
        return tuple(x for x in text.split("+") if x)
    return text


def parse_grid(specs: Sequence[str], cfg: CMATHConfig, opts: TrainOptions) -> List[Tuple[str, str, list]]:
    """``KEY=V1,V2`` each -> [(key, "config" | "options", typed values)]; a key naming both a config
    field and a training option, or neither, or given twice, is a one-line error."""
    cfg_keys = set(cfg.to_dict())
    opt_keys = {f.name for f in fields(TrainOptions)} - NOT_SWEPT
    out, seen = [], set()
    for spec in specs:
        key, eq, values = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or not values.strip():
            raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,...")
        if key in seen:
            raise ValueError(f"--grid {key}: given twice")
        seen.add(key)
        if key in cfg_keys and key in opt_keys and key not in SHARED:
            raise ValueError(f"--grid {key}: names both a config field and a training option")
        if key in SHARED:
            where, current = "options", getattr(opts, key)
        elif key in cfg_keys:
            where, current = "config", cfg.to_dict()[key]
        elif key in opt_keys:
            where, current = "options", getattr(opts, key)
        else:
            raise ValueError(f"--grid {key}: not a config field or a training option")
        vals = [_typed(key, current, v.strip()) for v in values.split(",") if v.strip()]
        if len(set(map(str, vals))) != len(vals):
            raise ValueError(f"--grid {key}: a value is given twice")
        out.append((key, where, vals))
    return out


def cell_name(settings: Dict[str, object]) -> str:
    """A folder name for one cell: ``key=value,key=value`` with path separators replaced."""
    text = ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in settings.items())
    return text.replace(os.sep, "_").replace("/", "_") or "base"


def cells(grid, cfg: CMATHConfig, opts: TrainOptions):
    """Every combination: (name, settings, config, options)."""
    keys = [(k, where) for k, where, _ in grid]
    for combo in itertools.product(*[vals for _, _, vals in grid]):
        settings = dict(zip([k for k, _ in keys], combo))
        c_over = {k: v for (k, where), v in zip(keys, combo) if where == "config"}
        o_over = {k: v for (k, where), v in zip(keys, combo) if where == "options"}
        c = CMATHConfig.from_dict(dict(cfg.to_dict(), **c_over)) if c_over else cfg
        o = replace(opts, **o_over) if o_over else opts
        o.validate()
        yield cell_name(settings), settings, c, o


def summarise(rows: List[dict], keys: Sequence[str], out_dir: str) -> str:
    """Write ``sweep.csv`` and ``sweep.md`` (mean ± std per cell) -> the markdown table."""
    head = list(keys) + ["seeds", "accuracy", "accuracy_std", "weighted_f1", "weighted_f1_std"]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    for r in rows:
        w.writerow([r["settings"][k] for k in keys] + [r["seeds"], f"{r['accuracy']:.4f}", f"{r['accuracy_std']:.4f}",
                                                        f"{r['weighted_f1']:.4f}", f"{r['weighted_f1_std']:.4f}"])
    atomic_write_text(os.path.join(out_dir, "sweep.csv"), buf.getvalue())
    lines = ["| " + " | ".join(list(keys) + ["seeds", "accuracy", "weighted F1"]) + " |",
             "|" + "---|" * (len(keys) + 3)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["settings"][k]) for k in keys] + [
            str(r["seeds"]), f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}",
            f"{r['weighted_f1']:.4f} ± {r['weighted_f1_std']:.4f}"]) + " |")
    table = "\n".join(lines) + "\n"
    atomic_write_text(os.path.join(out_dir, "sweep.md"), table)
    return table


def sweep(cfg: CMATHConfig, data, opts: TrainOptions, grid_specs: Sequence[str], seeds: int, out_dir: str,
          log=print) -> str:
    """Train every cell of the grid for ``seeds`` seeds into ``out_dir``; -> the markdown table."""
    from .loop import RunExistsError, check_output, train_one
    from .rundir import RunLock, existing_run, remove_run_files
    grid = parse_grid(grid_specs, cfg, opts)
    plan = list(cells(grid, cfg, opts))
    check_output(out_dir, opts.resume, opts.overwrite)
    os.makedirs(out_dir, exist_ok=True)
    with RunLock(out_dir):
        if opts.overwrite and not opts.resume:
            remove_run_files(out_dir)
        for name, _, _, _ in plan:
            cell_dir = os.path.join(out_dir, name)
            held = existing_run(cell_dir) if os.path.isdir(cell_dir) else None
            if held and not (opts.resume or opts.overwrite):
                raise RunExistsError(f"--out {out_dir}: cell {name} holds {held}: continue the sweep with --resume, "
                                     f"replace it with --overwrite, or give another --out")
            if held and opts.overwrite and not opts.resume:
                remove_run_files(cell_dir)
        runs = []
        for name, settings, c, o in plan:
            for k in range(seeds):
                so = replace(o, seed=o.seed + k, devices=None)
                runs.append((f"{name}/seed{k}", c, so, os.path.join(out_dir, name, f"seed{k}")))
        log(f"sweep: {len(plan)} cells x {seeds} seeds = {len(runs)} runs")
        if opts.devices:
            from .parallel import parse_devices, run_parallel
            done, failed = run_parallel(runs, data, parse_devices(opts.devices), log)
        else:
            done, failed = {}, {}
            for tag, c, so, folder in runs:
                log(f"--- {tag} ---")
                try:
                    done[tag] = train_one(c, data, so, folder, log)
                except (ValueError, RuntimeError, OSError) as exc:
                    failed[tag] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        rows = []
        for name, settings, c, o in plan:
            results = [done.get(f"{name}/seed{k}") for k in range(seeds)]
            if any(r is None or "interrupted_after_epoch" in r for r in results):
                continue
            row = {"settings": settings, "seeds": seeds}
            for key in ("accuracy", "weighted_f1"):
                vals = np.array([r[key] for r in results])
                row[key] = float(vals.mean())
                row[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
            atomic_write_text(os.path.join(out_dir, name, "metrics.json"), json.dumps(dict(
                row, per_seed=[{k: r[k] for k in ("seed", "epoch", "accuracy", "weighted_f1")} for r in results]),
                indent=2, default=str))
            rows.append(row)
        table = summarise(rows, [k for k, _, _ in grid], out_dir)
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(runs)} runs failed ("
                               + "; ".join(f"{t}: {e}" for t, e in sorted(failed.items()))
                               + f"); the table in {out_dir} holds the cells that finished; --resume continues")
        return table
