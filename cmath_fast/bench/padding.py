"""What the CUDA-graph shape buckets cost in padding: rows computed per valid utterance, padded
to each batch's longest dialogue (eager) and to the buckets (graphed), and — for the fused
model's per-utterance layers, which run on packed rows — the valid rows (eager: 1.00) and the
graphs' row buckets; on the benchmark batches R1/R2 and on an epoch of each synthetic preset (its
training dialogues in the trainer's seeded order, at the preset's batch size). Computed on the
host: no GPU needed."""

from __future__ import annotations

import torch

from ..data.dataset import batch_indices
from ..graphs import bucket_shape
from ..packing import row_bucket
from .shapes import R1_LENGTHS, R2_LENGTHS


def _cost(lengths, batches, batch_size):
    """(valid rows, padded rows per valid row: eager, graph buckets, packed rows in graph buckets)."""
    valid = sum(lengths)
    eager = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    shapes = [bucket_shape(len(b), max(lengths[i] for i in b), batch_size) for b in batches]
    graph = sum(B * L for B, L in shapes)
    packed = sum(row_bucket(sum(lengths[i] for i in b), B * L) for b, (B, L) in zip(batches, shapes))
    return valid, eager / valid, graph / valid, packed / valid


def graph_count(lengths, batches, batch_size) -> int:
    """How many CUDA graphs the packed, graphed step captures for these batches: one per distinct
    (B, L, rows) bucket."""
    keys = set()
    for b in batches:
        B, L = bucket_shape(len(b), max(lengths[i] for i in b), batch_size)
        keys.add((B, L, row_bucket(sum(lengths[i] for i in b), B * L)))
    return len(keys)


def padding_rows():
    from ..config import CMATHConfig
    from ..data.synthetic import make_synthetic

    """(name, batch size, valid rows, {order: (eager, graphed, packed graphed) rows per valid row,
    graphs captured})."""
    out = []
    for name, lengths in (("R1 (one iemocap batch)", list(R1_LENGTHS)), ("R2 (one meld batch)", list(R2_LENGTHS))):
        batches = [list(range(len(lengths)))]
        valid, *costs = _cost(lengths, batches, len(lengths))
        out.append((name, len(lengths), valid, {"shuffled": tuple(costs) + (graph_count(lengths, batches, len(lengths)),)}))
    # each synthetic set at the batch size of the preset `cmath-fast train` gives it
    for preset, model_preset in (("small", "tiny"), ("iemocap", "iemocap"), ("meld", "meld")):
        data = make_synthetic(preset)
        cfg = CMATHConfig.preset(model_preset)
        lengths = [len(d) for d in data.split("train")]
        costs = {}
        for grouped in (False, True):
            batches = batch_indices(lengths, cfg.batch_size, shuffle=True,
                                    generator=torch.Generator().manual_seed(0), group_by_length=grouped)
            valid, *cost = _cost(lengths, batches, cfg.batch_size)
            costs["grouped" if grouped else "shuffled"] = tuple(cost) + (graph_count(lengths, batches, cfg.batch_size),)
        out.append((f"synthetic {preset}, one epoch", cfg.batch_size, valid, costs))
    return out


def padding_table() -> str:
    lines = ["| batches | batch size | valid rows | padded, eager | padded, graph buckets | packed, graph buckets | "
             "graphs | padded, eager, --group-by-length | padded, graph buckets, --group-by-length | "
             "packed, graph buckets, --group-by-length | graphs, --group-by-length |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def fmt(cost):
        return [f"{x:.2f}" for x in cost[:3]] + [str(cost[3])]
    for name, bs, valid, costs in padding_rows():
        cells = fmt(costs["shuffled"])
        cells += fmt(costs["grouped"]) if "grouped" in costs else ["—"] * 4
        lines.append(f"| {name} | {bs} | {valid} | " + " | ".join(cells) + " |")
    return ("Rows computed per valid utterance (per-utterance layers; packed rows in eager mode compute "
            "exactly the valid rows, 1.00), and the CUDA graphs an epoch of the packed step captures:\n\n"
            + "\n".join(lines))
