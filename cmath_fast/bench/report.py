"""Turn benchmark CSVs into a Markdown table and plots (time per provider, speed-up over eager)."""

from __future__ import annotations

import math
import os
from collections import defaultdict
from typing import Dict, List, Sequence

from .results import read_rows


def _groups(rows):
    out = defaultdict(dict)
    for r in rows:
        out[(r["op"], r["shape"], r["mode"], r["dtype"])][r["provider"]] = r
    return out


def markdown_table(rows: Sequence[Dict[str, object]]) -> str:
    """One line per (op, shape, mode, dtype): median µs per provider and the speed-up of each
    provider over eager."""
    groups = _groups(rows)
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p != "eager", p))
    head = ["op", "shape", "mode", "dtype"] + [f"{p} µs" for p in providers] + \
        [f"{p} ×eager" for p in providers if p != "eager"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups):
        g = groups[key]
        cells = list(key)
        cells += [f"{g[p]['median_us']:.1f}" if p in g else "—" for p in providers]
        base = g.get("eager", {}).get("median_us")
        for p in providers:
            if p == "eager":
                continue
            ok = p in g and base and not math.isnan(base)
            cells.append(f"{base / g[p]['median_us']:.2f}" if ok else "—")
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    first = rows[0] if rows else {}
    lines.append("")
    lines.append(f"GPU {first.get('gpu', '?')}, torch {first.get('torch', '?')}, Triton "
                 f"{first.get('triton', '?')}, {first.get('date', '?')}; median of repeated runs "
                 f"(triton.testing.do_bench).")
    return "\n".join(lines)


def plots(rows: Sequence[Dict[str, object]], out_dir: str) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    written = []
    by_op_mode = defaultdict(list)
    for r in rows:
        by_op_mode[(r["op"], r["mode"], r["dtype"])].append(r)
    for (op, mode, dtype), rs in sorted(by_op_mode.items()):
        shapes = sorted({r["shape"] for r in rs})
        providers = sorted({r["provider"] for r in rs}, key=lambda p: (p != "eager", p))
        table = {(r["shape"], r["provider"]): r["median_us"] for r in rs}
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
        width = 0.8 / max(len(providers), 1)
        for i, p in enumerate(providers):
            xs = [j + i * width for j in range(len(shapes))]
            ax1.bar(xs, [table.get((s, p), float("nan")) for s in shapes], width, label=p)
            ax2.bar(xs, [table.get((s, "eager"), float("nan")) / table.get((s, p), float("nan"))
                         for s in shapes], width, label=p)
        for ax, title in ((ax1, "median time (µs, lower is better)"), (ax2, "speed-up over eager")):
            ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))], shapes, rotation=30, ha="right")
            ax.set_title(f"{op} {mode} {dtype}: {title}")
        ax1.set_yscale("log")
        ax2.axhline(1.0, color="grey", linewidth=0.8)
        ax1.legend(fontsize=7)
        fig.tight_layout()
        path = os.path.join(out_dir, f"{op}-{mode}-{dtype}.png".replace("+", "_"))
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def report(csv_paths: Sequence[str], out_dir: str) -> str:
    rows = []
    for p in csv_paths:
        rows.extend(read_rows(p))
    if not rows:
        raise ValueError("no benchmark rows in " + ", ".join(csv_paths))
    md = markdown_table(rows)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(md + "\n")
    plots(rows, out_dir)
    return md
