"""NVTX ranges for Nsight (domain ``cmath``, names ``cmath/<component>/<phase>``).

Ranges cost nothing measurable when disabled (``nvtx_range`` returns a shared null context).
Enable them with ``CMATH_FAST_NVTX=1`` or ``enable()`` (``cmath-fast profile`` does). The same
ranges feed listeners, such as the device-op counter's per-component breakdown.
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, List

DOMAIN = "cmath"
_ENABLED = os.environ.get("CMATH_FAST_NVTX", "0") == "1"
_LISTENERS: List[Callable[[str, bool], None]] = []
_NULL = contextlib.nullcontext()


def enable(flag: bool = True) -> None:
    global _ENABLED
    _ENABLED = bool(flag)


def enabled() -> bool:
    return _ENABLED


def add_listener(fn: Callable[[str, bool], None]) -> None:
    _LISTENERS.append(fn)


def remove_listener(fn: Callable[[str, bool], None]) -> None:
    _LISTENERS.remove(fn)


class _Range:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        if _ENABLED:
            import nvtx
            nvtx.push_range(message=self.name, domain=DOMAIN)
        for fn in _LISTENERS:
            fn(self.name, True)
        return self

    def __exit__(self, *exc):
        for fn in _LISTENERS:
            fn(self.name, False)
        if _ENABLED:
            import nvtx
            nvtx.pop_range(domain=DOMAIN)
        return False


def nvtx_range(component: str, phase: str = "fwd"):
    """A range ``cmath/<component>/<phase>`` (a null context when nothing listens)."""
    if not _ENABLED and not _LISTENERS:
        return _NULL
    return _Range(f"cmath/{component}/{phase}")
