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
    """One line per (op, shape, mode, dtype): median µs per provider, the hardware floor, each
    provider's speed-up over eager, our providers' speed-up over the best torch.compile mode, and
    each provider's distance to the floor (median ÷ floor)."""
    groups = _groups(rows)
    providers = sorted({r["provider"] for r in rows}, key=lambda p: (p != "eager", p))
    compiles = [p for p in providers if p.startswith("compile")]
    ours = [p for p in providers if p.startswith("triton")]
    head = (["op", "shape", "mode", "dtype"] + [f"{p} µs" for p in providers] + ["floor µs"]
            + [f"{p} ×eager" for p in providers if p != "eager"]
            + ([f"{p} ×best compile" for p in ours] if compiles else [])
            + [f"{p} ÷floor" for p in providers])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def speedup(base, g, p):
        ok = p in g and base and not math.isnan(base)
        return f"{base / g[p]['median_us']:.2f}" if ok else "—"
    for key in sorted(groups):
        g = groups[key]
        floors = [r["floor_us"] for r in g.values() if not math.isnan(r.get("floor_us", float("nan")))]
        floor = floors[0] if floors else float("nan")
        cells = list(key)
        cells += [f"{g[p]['median_us']:.1f}" if p in g else "—" for p in providers]
        cells.append(f"{floor:.1f}" if not math.isnan(floor) else "—")
        base = g.get("eager", {}).get("median_us")
        cells += [speedup(base, g, p) for p in providers if p != "eager"]
        if compiles:
            best = min((g[c]["median_us"] for c in compiles if c in g), default=None)
            cells += [speedup(best, g, p) for p in ours]
        cells += [f"{g[p]['median_us'] / floor:.1f}" if p in g and not math.isnan(floor) else "—"
                  for p in providers]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    epochs = [r for r in rows if not math.isnan(float(r.get("items_per_s", float("nan"))))]
    if epochs:
        lines += ["", "Epochs, dialogues per second:", ""]
        eprov = sorted({r["provider"] for r in epochs}, key=lambda p: (p != "eager", p))
        lines.append("| op | shape | dtype | " + " | ".join(eprov) + " |")
        lines.append("|" + "---|" * (3 + len(eprov)))
        for key in sorted({(r["op"], r["shape"], r["dtype"]) for r in epochs}):
            per = {r["provider"]: r["items_per_s"] for r in epochs if (r["op"], r["shape"], r["dtype"]) == key}
            lines.append("| " + " | ".join(list(key) + [f"{per[p]:.1f}" if p in per else "—" for p in eprov]) + " |")
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
