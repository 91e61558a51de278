"""One graphed training step under torch.profiler, on a GPU: ``python bench/profile_step.py --out
FILE.json`` (the on-a-GPU issue's profile). Prints and writes:

- kernels per step and the GPU-busy fraction of the replays (the union of the kernels' intervals
  over the span from the first kernel's start to the last one's end);
- the ten kernels that take the most GPU time;
- peak memory of a graphed step against an eager one's (``torch.cuda.max_memory_allocated``);
- whether any Triton kernel compiled a new variant after the first step.

The model is the fused one at a preset's benchmark shape (iemocap-d1024, the R1 batch), in
bf16-mixed, graphed with the device-resident input path the trainer uses. Without a GPU it says so
and exits 0. Every part is written as soon as it is measured: a part that fails leaves the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterable, Tuple


def busy_fraction(intervals: Iterable[Tuple[float, float]]) -> Tuple[float, float, float]:
    """(busy, span, fraction) of (start, end) intervals: the length of their union, the time from
    the first start to the last end, and their ratio."""
    spans = sorted((float(s), float(e)) for s, e in intervals if e > s)
    if not spans:
        return 0.0, 0.0, 0.0
    busy, cur_s, cur_e = 0.0, spans[0][0], spans[0][1]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = max(e for _, e in spans) - spans[0][0]
    return busy, span, busy / span if span > 0 else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="iemocap-d1024")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        print("profile_step: needs a CUDA device (none here); nothing measured")
        return 0
    from cmath_fast import CMATH, CMATHConfig
    from cmath_fast.bench.shapes import MODEL_SHAPES
    from cmath_fast.data.dataset import Dialogue
    from cmath_fast.data.device import DeviceDialogues
    from cmath_fast.graphs import GraphedTrainer
    from cmath_fast.step import train_step
    from cmath_fast.training.loop import EpochTerms
    import numpy as np

    result = {}

    def save():
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=2)

    shape = MODEL_SHAPES[args.shape]
    cfg = CMATHConfig.preset(shape.preset, d_model=shape.d, d_z=shape.d, num_heads=shape.heads, dropout=0.1)
    rng = np.random.default_rng(0)
    dims = (cfg.text_dim, cfg.audio_dim, cfg.visual_dim)
    dialogues = [Dialogue(i, *(rng.standard_normal((n, d), dtype=np.float32) for d in dims),
                          rng.integers(0, cfg.num_speakers, n), rng.integers(0, cfg.num_classes, n))
                 for i, n in enumerate(shape.lengths)]
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton").cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True, capturable=True)
    store = DeviceDialogues(dialogues, "cuda")
    runner = GraphedTrainer(model, opt, batch_size=len(dialogues), precision="bf16-mixed", store=store,
                            terms=EpochTerms(1))
    batch = store.index_batch(list(range(len(dialogues))),
                              runner.bucket(len(dialogues), max(shape.lengths))).pin_memory()
    result["shape"] = {"name": shape.name, "lengths": list(shape.lengths), "precision": "bf16-mixed"}

    def variants():
        from cmath_fast.ops.introspect import compiled_variants
        try:
            return compiled_variants()
        except Exception as exc:  # the count is a check, not the measurement
            return {"error": str(exc)}

    # eager, then graphed: peak memory of one step each
    b = store.index_batch(list(range(len(dialogues)))).with_rows().to("cuda").gather(store)
    for _ in range(2):
        train_step(model, opt, b.inputs(), b.labels, 5, precision="bf16-mixed", rows=b.rows)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    train_step(model, opt, b.inputs(), b.labels, 5, precision="bf16-mixed", rows=b.rows)
    torch.cuda.synchronize()
    result["peak_memory_eager_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    runner.step(batch, 5)  # captures
    torch.cuda.synchronize()
    before = variants()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        runner.step(batch, 5)
    torch.cuda.synchronize()
    result["peak_memory_graphed_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    result["new_variants_after_first_step"] = before != variants()
    save()

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start.record()
        for _ in range(args.steps):
            runner.step(batch, 5)
        end.record()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy, span, frac = busy_fraction((e.time_range.start, e.time_range.end) for e in kernels)
    result.update({"steps": args.steps, "step_ms": start.elapsed_time(end) / args.steps,
                   "kernels_per_step": len(kernels) / args.steps, "gpu_busy_fraction": frac,
                   "gpu_busy_us_per_step": busy / args.steps, "kernel_span_us_per_step": span / args.steps})
    totals = {}
    for e in kernels:
        totals[e.name] = totals.get(e.name, 0.0) + (e.time_range.end - e.time_range.start)
    result["top_kernels_us_per_step"] = [(n, t / args.steps) for n, t in
                                         sorted(totals.items(), key=lambda kv: -kv[1])[:10]]
    save()
    print(f"{shape.name}, bf16-mixed, graphed: {result['step_ms']:.3f} ms a step, "
          f"{result['kernels_per_step']:.0f} kernels, GPU busy {100 * frac:.1f} % of the kernel span")
    print(f"peak memory: graphed {result['peak_memory_graphed_mib']:.0f} MiB, eager "
          f"{result['peak_memory_eager_mib']:.0f} MiB; new kernel variants after step 1: "
          f"{result['new_variants_after_first_step']}")
    print("top kernels (us per step):")
    for n, t in result["top_kernels_us_per_step"]:
        print(f"  {t:9.1f}  {n[:100]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
