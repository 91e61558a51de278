"""cmath-fast: CMATH for multimodal emotion recognition in conversation — train, evaluate and
predict from IEMOCAP/MELD feature files or synthetic data, inspect and convert data, benchmark
and profile the fused kernels."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from . import bench, data, env, features, train
from ..training.errors import NonFiniteLossError
from .common import CLIError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmath-fast", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error (also CMATH_FAST_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)
    for module in (env, train, data, features, bench):
        module.add_parsers(sub)
    return p


def _resume_hint(args) -> str:
    if args.command != "train":
        return ""
    argv = [a for a in sys.argv[1:] if a not in ("--resume", "--override")]
    return (f"; the run in {args.out} continues from its last completed epoch with: "
            f"cmath-fast {' '.join(argv)} --resume")


def _kernel_hint(exc) -> str:
    """For a kernel that does not fit the GPU: the switch that runs everything else fused."""
    from ..components import component_of_kernel, without
    component = component_of_kernel(getattr(exc, "kernel", ""))
    return f"; or run without the fused {component}: {without(component)}" if component else ""


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"cmath-fast: warning: {message}", file=sys.stderr)


def main(argv: Optional[List[str]] = None) -> int:
    """Run a command. Errors are one line on stderr: exit 2 for a user error (bad input, bad
    file, bad setting), 1 for a run that failed (a non-finite loss, out of memory), 130 on Ctrl-C.
    ``--debug`` or CMATH_FAST_DEBUG=1 shows the traceback instead."""
    args = build_parser().parse_args(argv)
    args._argv = list(argv) if argv is not None else sys.argv[1:]  # what --ddp hands to torchrun
    debug = args.debug or os.environ.get("CMATH_FAST_DEBUG", "0") == "1"
    with warnings.catch_warnings():
        if not debug:  # a warning is one line too
            warnings.showwarning = _show_warning
        return _run(args, debug)


def _run(args, debug: bool) -> int:
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
    except RuntimeError as exc:
        if debug:
            raise
        if not hasattr(exc, "kernel"):  # a KernelResourceError names its kernel
            return _user_error(args, exc)
        print(f"cmath-fast {args.command}: error: {exc}{_kernel_hint(exc)}", file=sys.stderr)
        return 1
    except (CLIError, ValueError, TypeError, OSError, KeyError, IndexError) as exc:
        if debug:
            raise
        return _user_error(args, exc)
    except Exception as exc:
        # Triton's own errors (a compile that fails on this GPU, a resource it lacks) are Exceptions
        # of its own: one line, the traceback behind --debug
        if debug or not type(exc).__module__.startswith("triton"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"cmath-fast {args.command}: error: Triton {type(exc).__name__}: {msg} (--debug shows the "
              f"traceback; `cmath-fast doctor` checks every fused component on this device)", file=sys.stderr)
        return 1


def _user_error(args, exc) -> int:
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"cmath-fast {args.command}: error: {msg}", file=sys.stderr)
    return 2


__all__ = ["CLIError", "build_parser", "main"]
