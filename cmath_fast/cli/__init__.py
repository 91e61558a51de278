"""cmath-fast: CMATH for multimodal emotion recognition in conversation — train, evaluate and
predict from IEMOCAP/MELD feature files or synthetic data, inspect and convert data, benchmark
and profile the fused kernels."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import bench, data, env, train
from .common import CLIError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmath-fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (env, train, data, bench):
        module.add_parsers(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, ValueError, TypeError, OSError, RuntimeError) as exc:
        print(f"cmath-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["CLIError", "build_parser", "main"]
