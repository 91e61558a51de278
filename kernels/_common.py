"""What every kernel file shares: constants, the interpreter switch, dot precision, tile helpers
and the launch hook.

Constants used inside ``@triton.jit`` functions are ``tl.constexpr`` globals: a plain module-level
float works in the interpreter but is a NameError in the ahead-of-time compile.
"""

from __future__ import annotations

import os
from typing import Callable, List

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
# The log-sum-exp stored for a row with no valid key: exp2(score - BIG) underflows to exactly 0.
BIG = tl.constexpr(1.0e30)
# The score given to a masked key (finite, so that a fully masked row never produces NaN).
NEG = tl.constexpr(-1.0e30)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: IEEE dots (tf32 would lose ~3 decimal digits against an fp32 reference).
    return "ieee" if dtype == torch.float32 else "tf32"


def upcast(dtype: torch.dtype) -> bool:
    """Load tiles as fp32: always in the interpreter (its bf16 arithmetic is wrong), and for fp32."""
    return interpreting() or dtype == torch.float32


def block_d(dh: int) -> int:
    """A head dim padded to a power of two, at least 16 (tl.dot's minimum K on the GPU)."""
    return max(16, triton.next_power_of_2(dh))


def stride_units(*strides: int):
    """(unit, counts): strides that change from batch to batch (a group's or a stream's N x C, a
    padded batch's L x C), which the kernels leave unspecialised, as counts of ``unit`` elements,
    ``unit`` the largest of 16, 8, 4, 2, 1 dividing every one of them. A kernel takes ``unit``
    as a specialised argument and multiplies it back (``stride = count * unit``): with unit 16 the
    compiler knows every such offset keeps 16-byte runs aligned (vector and asynchronous loads),
    while the counts stay unspecialised, so a new batch compiles no new variant. (``tl.multiple_of``
    on a scalar argument is dropped by the compiler; this is what it would have said.)"""
    unit = 16
    while unit > 1 and any(s % unit for s in strides):
        unit //= 2
    return unit, tuple(s // unit for s in strides)


@triton.jit
def tile_prologue(pid, BLOCK: tl.constexpr, length, BLOCK_D: tl.constexpr, dh):
    """Offsets and in-range masks of one BLOCK-row tile and of the (padded) head dim."""
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    return offs, offs_d, offs < length, offs_d < dh


@triton.jit
def load_rows(ptrs, row_ok, d_ok, UPCAST: tl.constexpr):
    """A (rows, BLOCK_D) tile, zero outside the valid rows and head-dim columns."""
    x = tl.load(ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if UPCAST:
        x = x.to(tl.float32)
    return x


# ---------------------------------------------------------------------------------------------
# Launch hook: every launcher goes through ``launch`` so that tools (the device-op counter) can
# observe kernel launches without patching this package's private names.

_LAUNCH_LISTENERS: List[Callable[[str, bool], None]] = []


def add_launch_listener(fn: Callable[[str, bool], None]) -> None:
    """``fn(kernel_name, entering)`` is called before (True) and after (False) each launch."""
    _LAUNCH_LISTENERS.append(fn)


def remove_launch_listener(fn: Callable[[str, bool], None]) -> None:
    _LAUNCH_LISTENERS.remove(fn)


class KernelResourceError(RuntimeError):
    """A kernel's tile needs more shared memory or registers than the GPU it was launched on has.
    ``kernel``: the kernel's name; ``tile``: its block sizes, warps and stages; ``arch``: sm_XY."""

    def __init__(self, kernel: str, tile: str, arch: str, resource: str, required, limit):
        self.kernel, self.tile, self.arch = kernel, tile, arch
        super().__init__(f"kernel {kernel} (tile {tile}) needs {required} of {resource} but {arch} allows "
                         f"{limit}: choose tiles that fit with the autotune mode (CMATH_FAST_AUTOTUNE=1), "
                         f"whose winners go in a per-family row of kernels/configs.py")


def _kernel_name(kernel) -> str:
    inner = kernel
    while hasattr(inner, "fn"):  # an autotuner wraps a JITFunction, which wraps the function
        inner = inner.fn
    return getattr(inner, "__name__", str(kernel))


def _arch() -> str:
    if not torch.cuda.is_available():
        return "this device"
    major, minor = torch.cuda.get_device_capability()
    return f"{torch.cuda.get_device_name()} (sm_{major}{minor})"


def _launch(kernel, grid, args, kwargs):
    try:
        return kernel[grid](*args, **kwargs)
    except Exception as exc:
        # Triton's OutOfResources is an Exception, not a RuntimeError: one that names the kernel,
        # its tile and the device replaces it (its module moved between Triton versions: by name)
        if type(exc).__name__ != "OutOfResources":
            raise
        tile = ", ".join(f"{k} {v}" for k, v in kwargs.items() if k.startswith("BLOCK") or k.startswith("num_"))
        raise KernelResourceError(_kernel_name(kernel), tile, _arch(), getattr(exc, "name", "resources"),
                                  getattr(exc, "required", "?"), getattr(exc, "limit", "?")) from exc


def launch(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)``, announced to the launch listeners; a tile that does not
    fit the device raises ``KernelResourceError``."""
    if not _LAUNCH_LISTENERS:
        return _launch(kernel, grid, args, kwargs)
    name = _kernel_name(kernel)
    for fn in _LAUNCH_LISTENERS:
        fn(name, True)
    try:
        return _launch(kernel, grid, args, kwargs)
    finally:
        for fn in _LAUNCH_LISTENERS:
            fn(name, False)
