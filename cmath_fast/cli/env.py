"""``cmath-fast env`` (what can run here, and why not) and ``cmath-fast smoke`` (one forward +
backward of a preset on a random ragged batch)."""

from __future__ import annotations

import time

import torch

from ..config import CMATHConfig
from ..testing import random_batch
from .common import add_fused_argument, check_device_flag, fused_arg


def cmd_env(args) -> int:
    from ..info import format_report
    print(format_report())
    return 0


def cmd_doctor(args) -> int:
    import json
    import sys
    from .. import doctor
    from ..backend import device_rules
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device_flag(device)
    rules = device_rules(device)
    where = rules.describe() + (" (Triton's interpreter, tiny shapes)" if device == "cpu" else "")
    if not args.json:
        print(f"cmath-fast doctor on {where}: each fused component against the reference (2x rule)")
    stream = sys.stderr if args.json else sys.stdout
    checks = doctor.run(device, quick=args.quick,
                        report=lambda c: print(doctor.format_check(c), file=stream, flush=True))
    if args.json:
        print(json.dumps(doctor.to_json(checks), indent=2))
    else:
        print(doctor.summary(checks))
    return 0 if all(c.status != doctor.FAIL for c in checks) else 1


def cmd_smoke(args) -> int:
    from ..model import CMATH
    check_device_flag(args.device)
    cfg = CMATHConfig.preset(args.preset)
    if args.d_model:
        cfg = cfg.replace(d_model=args.d_model, d_z=args.d_model)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = CMATH(cfg, backend=args.backend, fused=fused_arg(args)).to(args.device)
    lengths = torch.randint(1, args.max_len + 1, (args.batch,), generator=gen).tolist()
    lengths[-1] = args.max_len
    text, audio, visual, speakers, lens, labels = random_batch(cfg, lengths, gen, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"preset {cfg.name}: d_model {cfg.d_model}, {n_params / 1e6:.2f} M parameters, "
          f"backend {model.backend} ({model.backend_reason}, fused {model.fused}), device {args.device}")
    print(f"batch: {len(lengths)} dialogues, lengths {lengths}")
    t0 = time.perf_counter()
    out = model(text, audio, visual, speakers, lens)
    total, terms = model.loss(out, labels)
    total.backward()
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    print("loss terms: " + ", ".join(f"{k} {float(v):.4f}" for k, v in terms.items()))
    ok = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    print(f"forward + backward: {dt * 1000:.1f} ms; gradients finite: {ok}")
    return 0 if ok and torch.isfinite(total) else 1


def cmd_warmup(args) -> int:
    """Compile every kernel variant a preset's training and inference use, into Triton's on-disk
    cache, so that a run starts without JIT pauses: one training step and one eval forward per
    length bucket (16, 32, 64, 128) on random batches."""
    from ..ops import LENGTH_BUCKETS
    from ..model import CMATH
    from ..step import autocast_context, check_precision, default_precision, train_step, weight_dtype
    from .common import CLIError
    if not torch.cuda.is_available():
        raise CLIError("warmup fills the GPU kernel cache: no CUDA device here")
    if args.precision == "auto":
        args.precision = default_precision(args.device)
    check_precision(args.precision, args.device)
    cfg = CMATHConfig.preset(args.preset)
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton").to(device=args.device, dtype=weight_dtype(args.precision))
    opt = torch.optim.Adam(model.parameters(), lr=1e-6)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for bucket in LENGTH_BUCKETS:
        lengths = [bucket, max(1, bucket // 2)]
        batch = list(random_batch(cfg, lengths, gen, args.device))
        batch[:3] = [x.to(weight_dtype(args.precision)) for x in batch[:3]]
        model.train()
        train_step(model, opt, batch[:5], batch[5], epoch=1, precision=args.precision)
        model.eval()
        with torch.no_grad(), autocast_context(args.precision, torch.device(args.device).type):
            model(*batch[:5])
    torch.cuda.synchronize()
    print(f"warmed up preset {cfg.name} ({args.precision}) for length buckets {list(LENGTH_BUCKETS)} "
          f"in {time.perf_counter() - t0:.1f} s; later runs load the kernels from Triton's cache")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("env", help="versions, devices and which backends can run, and why not")
    s.set_defaults(func=cmd_env)

    s = sub.add_parser("doctor", help="self-test: every fused component against the reference on this device, "
                                      "in every dtype it runs (the first command on a new machine)",
                       description="Checks each fused component (attention padded and packed, Gaussian and PoE "
                                   "fusion, the U-Nets, the stacked LayerNorm, the fused loss, packed rows) and "
                                   "the whole fused model against the reference for one training step by the 2x "
                                   "rule, a CUDA-graph capture and a torch.compile. One line per check; exit 0 "
                                   "when every check that ran passed. Without a GPU: TRITON_INTERPRET=1 "
                                   "cmath-fast doctor --quick (tiny shapes, about a minute).")
    s.add_argument("--quick", action="store_true",
                   help="fewer, smaller checks: every component in fp32, the whole model in the other dtypes")
    s.add_argument("--json", action="store_true", help="the report as JSON on stdout (the lines go to stderr)")
    s.add_argument("--device", default=None, help="default: the current GPU, else the CPU")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("smoke", help="one forward + backward of a preset on a random ragged batch")
    s.add_argument("--preset", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--d-model", type=int, default=None, help="override the preset's d_model")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--max-len", type=int, default=12)
    s.add_argument("--backend", default="auto")
    add_fused_argument(s)
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_smoke)

    s = sub.add_parser("warmup", help="compile a preset's GPU kernels ahead of a run (Triton's disk cache)")
    s.add_argument("--preset", default="iemocap", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16"],
                   help="the precision mode to compile for (default auto: bf16-mixed where the GPU has native "
                        "bf16, fp16-mixed below compute capability 8.0)")
    s.add_argument("--device", default="cuda")
    s.set_defaults(func=cmd_warmup)
