"""cmath-fast: CMATH for multimodal emotion recognition in conversation — train, evaluate and
predict from IEMOCAP/MELD feature files or synthetic data, inspect and convert data, benchmark
and profile the fused kernels."""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from . import bench, data, env, train
from ..training.errors import NonFiniteLossError
from .common import CLIError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmath-fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also CMATH_FAST_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (env, train, data, bench):
        module.add_parsers(sub)
    return p


def _resume_hint(args) -> str:
    if args.command != "train":
        return ""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--override")]
    return (f"; the run in {args.out} continues from its last completed epoch with: "
            f"cmath-fast {' '.join(argv)} --resume")


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command. Errors are one line on stderr: exit 2 for a user error (bad input, bad
    file, bad setting), 1 for a run that failed (a non-finite loss, out of memory), 130 on Ctrl-C.
    ``--debug`` or CMATH_FAST_DEBUG=1 shows the traceback instead."""
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("CMATH_FAST_DEBUG", "0") == "1"
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"cmath-fast {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): stop quietly, as command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (NonFiniteLossError, MemoryError) as exc:
        if debug:
            raise
        print(f"cmath-fast {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except (CLIError, ValueError, TypeError, OSError, RuntimeError, KeyError, IndexError) as exc:
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cmath-fast {args.command}: error: {msg}", file=sys.stderr)
        return 2


__all__ = ["CLIError", "build_parser", "main"]
