"""What the rest of the package may know of the kernels without importing them: the GPU family
rules, the kernel variants compiled so far, and the kernels launched in a block."""

from __future__ import annotations

from typing import Optional

from ..kernels import cross_modal_attention, layer_norm, loss, reconstruction, row_conv, variational_fusion
from ..kernels._common import add_launch_listener, remove_launch_listener
from ..kernels.configs import FAMILY_SHARED_MEMORY, family_of

_MODULES = (cross_modal_attention, layer_norm, loss, reconstruction, row_conv, variational_fusion)


def _jit_functions():
    for module in _MODULES:
        for value in vars(module).values():
            if type(value).__name__ in ("JITFunction", "InterpretedFunction") and value.__module__ == module.__name__:
                yield value


def kernel_variants(fn) -> Optional[int]:
    """The variants of one JIT function in Triton's in-memory cache (None: this Triton does not
    expose it, or the function is interpreted)."""
    caches = getattr(fn, "device_caches", None)  # Triton >= 3.2
    if caches is not None:
        return sum(len(entry[0]) for entry in caches.values())
    cache = getattr(fn, "cache", None)  # Triton 3.0, 3.1
    if isinstance(cache, dict):
        return sum(len(v) for v in cache.values())
    return None


def compiled_variants() -> int:
    """Compiled kernel variants held by Triton's in-memory caches (0 in the interpreter)."""
    return sum(kernel_variants(fn) or 0 for fn in _jit_functions())


class launched_kernels:
    """Within this context, ``names`` collects the name of every kernel launched."""

    def __enter__(self):
        self.names = set()
        add_launch_listener(self._listen)
        return self

    def _listen(self, name: str, entering: bool) -> None:
        if entering:
            self.names.add(name)

    def __exit__(self, *exc):
        remove_launch_listener(self._listen)
        return False


__all__ = ["FAMILY_SHARED_MEMORY", "compiled_variants", "family_of", "kernel_variants", "launched_kernels"]
