"""``cmath-fast bench`` (the pytest benchmark suite, the device-op count, the report) and
``cmath-fast profile`` (training steps under NVTX ranges or torch.profiler)."""

from __future__ import annotations

import torch

from ..config import CMATHConfig
from ..testing import random_batch
from .common import CLIError, use_interpreter_without_cuda


def cmd_bench(args) -> int:
    import os
    if args.action and args.action[0] == "report":
        from ..bench.report import report
        paths = args.action[1:]
        if not paths:
            raise CLIError("bench report: give one or more result CSV files")
        print(report(paths, args.out))
        print(f"\nplots and report.md written to {args.out}")
        return 0
    if args.action and args.action[0] == "padding":
        from ..bench.padding import padding_table
        print(padding_table())
        return 0
    if args.action:
        raise CLIError(f"bench: unknown action {args.action[0]!r} (expected 'report', 'padding' or none)")
    if args.count_ops:
        use_interpreter_without_cuda()
        from ..bench.count_ops import count_training_step
        cfg = CMATHConfig.preset(args.preset)
        totals, parts = {}, {}
        for name, backend in (("reference", "torch"), ("fused", "triton")):
            totals[name], parts[name], _ = count_training_step(cfg, backend)
        print(f"ops per training step: reference {totals['reference']}, fused {totals['fused']}")
        comps = sorted(set(parts["reference"]) | set(parts["fused"]))
        width = max(len(c) for c in comps)
        print(f"{'component':<{width}}  reference  fused")
        for c in comps:
            print(f"{c:<{width}}  {parts['reference'].get(c, 0):>9}  {parts['fused'].get(c, 0):>5}")
        return 0
    import pytest
    here = os.path.join(os.getcwd(), "bench")
    if not os.path.isdir(here):
        raise CLIError("bench: run it from the source checkout (the folder with bench/), or use "
                       "--count-ops / report")
    return int(pytest.main([here, "-q"] + (["-m", "quick"] if args.quick else [])))


def cmd_profile(args) -> int:
    from .. import profiling
    from ..model import CMATH
    from ..packing import pack_rows
    from ..step import train_step
    if args.backend == "triton":
        use_interpreter_without_cuda()
    cfg = CMATHConfig.preset(args.preset)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = CMATH(cfg, backend=args.backend).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    lengths = [int(x) for x in args.lengths.split(",")]
    text, audio, visual, speakers, lens, labels = random_batch(cfg, lengths, gen, args.device)
    # the packed layout from host lengths, as the trainer builds it (no read-back per step)
    rows = pack_rows(torch.tensor(lengths), text.shape[1]).to(args.device) if model.packs() else None

    def step():
        train_step(model, opt, (text, audio, visual, speakers, lens), labels, epoch=1, rows=rows)

    for _ in range(args.warmup):
        step()
    profiling.enable(True)
    cuda = args.device.startswith("cuda")
    print(f"profiling {args.steps} step(s) of preset {cfg.name} ({model.backend}) on {args.device}, "
          f"lengths {lengths}")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
        print("done: NVTX ranges in domain 'cmath' (run under nsys with --capture-range=cudaProfilerApi)")
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    profiling.enable(False)
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("bench", help="run pytest bench/, count device ops, or report results")
    s.add_argument("action", nargs="*", help="'report CSV...' to turn result CSVs into plots and a table; "
                                              "'padding': rows computed per valid utterance, eager vs the "
                                              "CUDA-graph buckets, padded vs packed rows, and the graphs "
                                              "an epoch captures")
    s.add_argument("--count-ops", action="store_true",
                   help="count device operations of one training step, reference vs fused")
    s.add_argument("--preset", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--out", default="bench/results/report", help="report: output folder")
    s.add_argument("--quick", action="store_true", help="pytest bench/ -m quick")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("profile", help="training steps with NVTX ranges (Nsight) or torch.profiler on CPU")
    s.add_argument("--preset", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--backend", default="auto")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--lengths", default="12,9,7,4", help="dialogue lengths of the batch, comma-separated")
    s.add_argument("--top", type=int, default=15, help="CPU: rows of the top-operations table")
    s.set_defaults(func=cmd_profile)
