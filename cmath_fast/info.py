"""What this installation can run, and why not (``cmath-fast env``)."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import List, Tuple

import torch

from .backend import ENV_VAR, device_rules, requested_backend, resolve_backend, triton_status


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as exc:  # an optional dependency may fail in many ways; report, never raise
        return f"unavailable ({type(exc).__name__}: {exc})".splitlines()[0]


def report() -> List[Tuple[str, str]]:
    rows = [
        ("python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("triton", _version("triton")),
        ("numpy", _version("numpy")),
        ("cuda (torch built with)", str(torch.version.cuda)),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    rules = device_rules()
    rows.append(("gpu", rules.describe() if rules.platform != "cpu" else "none"))
    if rules.platform != "cpu":
        rows.append(("fused kernels here", ("tested: " if rules.kernels_tested else "untested: ")
                     + rules.kernels_reason))
        rows.append(("bf16", "native" if rules.bf16 else "not native"))
    rows.append(("precision auto ->", f"{rules.precision} ({rules.precision_reason})"))
    rows.append(("TRITON_INTERPRET", os.environ.get("TRITON_INTERPRET", "0")))
    ok, why = triton_status()
    rows.append(("backend torch", "available: pure PyTorch reference"))
    rows.append(("backend triton", ("available: " if ok else "unavailable: ") + why))
    if ok:
        try:
            from .ops._library import library_status
            registered, reason = library_status()
            rows.append(("custom operators", ("yes: " if registered else "no: ") + reason))
        except Exception as exc:  # report, never raise
            rows.append(("custom operators", f"unavailable ({type(exc).__name__}: {exc})".splitlines()[0]))
    try:
        chosen, reason = resolve_backend("auto")
        rows.append(("backend auto ->", f"{chosen} ({reason})"))
    except Exception as exc:
        rows.append(("backend auto ->", f"error: {exc}"))
    try:
        from .components import ENV_VAR as FUSED_VAR, format_fused, resolve_fused
        rows.append(("fused components", format_fused(resolve_fused()) + (f" ({FUSED_VAR})" if os.environ.get(FUSED_VAR)
                                                                           is not None else "")))
    except ValueError as exc:
        rows.append(("fused components", f"invalid: {exc}"))
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            requested_backend(env)
            rows.append((ENV_VAR, env))
        except ValueError as exc:
            rows.append((ENV_VAR, f"invalid: {exc}"))
    for mod in ("xformers", "nvtx", "safetensors", "sklearn", "matplotlib", "pytest_benchmark"):
        rows.append((mod, _version(mod)))
    return rows


def format_report() -> str:
    rows = report()
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


if __name__ == "__main__":
    print(format_report())
