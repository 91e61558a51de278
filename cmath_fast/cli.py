"""The ``cmath-fast`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from typing import List, Optional

import torch

from .config import CMATHConfig


class CLIError(Exception):
    """An error reported as one line, without a traceback."""


def _cmd_env(args) -> int:
    from .info import format_report
    print(format_report())
    return 0


def random_batch(cfg: CMATHConfig, lengths: List[int], generator: torch.Generator, device="cpu"):
    """A random right-padded batch (text, audio, visual, speakers, lengths, labels)."""
    B, L = len(lengths), max(lengths) if lengths else 0
    lens = torch.tensor(lengths, dtype=torch.long)
    feats = [torch.randn(B, L, dim, generator=generator) for dim in
             (cfg.text_dim, cfg.audio_dim, cfg.visual_dim)]
    speakers = torch.randint(0, cfg.num_speakers, (B, L), generator=generator)
    labels = torch.randint(0, cfg.num_classes, (B, L), generator=generator)
    out = [t.to(device) for t in feats] + [speakers.to(device), lens.to(device), labels.to(device)]
    return tuple(out)


def _cmd_smoke(args) -> int:
    from .model import CMATH
    cfg = CMATHConfig.preset(args.preset)
    if args.d_model:
        cfg = cfg.replace(d_model=args.d_model, d_z=args.d_model)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = CMATH(cfg, backend=args.backend).to(args.device)
    lengths = torch.randint(1, args.max_len + 1, (args.batch,), generator=gen).tolist()
    lengths[-1] = args.max_len
    text, audio, visual, speakers, lens, labels = random_batch(cfg, lengths, gen, args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"preset {cfg.name}: d_model {cfg.d_model}, {n_params / 1e6:.2f} M parameters, "
          f"backend {model.backend} ({model.backend_reason}), device {args.device}")
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmath-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("env", help="versions, devices and which backends can run, and why not")
    s.set_defaults(func=_cmd_env)

    s = sub.add_parser("smoke", help="one forward + backward of a preset on a random ragged batch")
    s.add_argument("--preset", default="tiny", choices=["tiny", "iemocap", "meld"])
    s.add_argument("--d-model", type=int, default=None, help="override the preset's d_model")
    s.add_argument("--batch", type=int, default=4)
    s.add_argument("--max-len", type=int, default=12)
    s.add_argument("--backend", default="auto")
    s.add_argument("--device", default="cpu")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_cmd_smoke)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"cmath-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
