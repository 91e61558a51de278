"""Device-op counter: a CPU proxy for launch overhead.

Counts, over one training step (forward, loss, backward, optimiser step), the aten operations
that launch work — views, reshapes and other metadata-only operations excluded — plus every
Triton kernel launch, and breaks them down by the NVTX component that was open.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Dict, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .. import profiling
from .._checks import skip_value_checks

aten = torch.ops.aten
# Allocation, aliasing and metadata-only ops: they launch nothing on a device.
_NO_LAUNCH = {
    aten.empty.memory_format, aten.empty_like.default, aten.empty_strided.default,
    aten.detach.default, aten.lift_fresh.default, aten.alias.default, aten._local_scalar_dense.default,
    aten.is_same_size.default, aten.sym_size.int, aten.sym_stride.int, aten.sym_numel.default,
    aten.set_.source_Storage_storage_offset, aten.resize_.default,
    aten.promote_types.default, aten.result_type.Tensor,
}


def launches_work(func) -> bool:
    if func in _NO_LAUNCH:
        return False
    schema = getattr(func, "_schema", None)
    if getattr(func, "is_view", False):
        return False
    name = str(getattr(schema, "name", ""))
    if name.startswith("cmath_fast::"):
        return False  # our operators: the Triton launches inside them are counted one by one
    if name.startswith("profiler::"):
        return False  # record_function's enter and exit: host-side markers
    return not name.startswith("aten::_nested") and name not in ("aten::view", "aten::_unsafe_view")


class OpCounter(TorchDispatchMode):
    """Counts launching aten ops and Triton launches per component (outermost open range)."""

    def __init__(self):
        super().__init__()
        self.counts: Counter = Counter()
        self.ops: Counter = Counter()
        self._stack = []
        self.in_launch = False  # the interpreter's own tensor copies inside a launch are not ops

    def component(self) -> str:
        if not self._stack:
            return "other"
        parts = self._stack[0].split("/")
        return "/".join(parts[1:-1]) or parts[-1]

    def _listen(self, name: str, entering: bool) -> None:
        if entering:
            self._stack.append(name)
        elif self._stack:
            self._stack.pop()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.in_launch and launches_work(func):
            self.counts[self.component()] += 1
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    def count_triton(self, name: str) -> None:
        self.counts[self.component()] += 1
        self.ops[f"triton::{name}"] += 1

    def _on_launch(self, name: str, entering: bool) -> None:
        if entering:
            self.count_triton(name)
        self.in_launch = entering

    def __enter__(self):
        from ..kernels._common import add_launch_listener
        profiling.add_listener(self._listen)
        add_launch_listener(self._on_launch)
        return super().__enter__()

    def __exit__(self, *exc):
        from ..kernels._common import remove_launch_listener
        remove_launch_listener(self._on_launch)
        profiling.remove_listener(self._listen)
        return super().__exit__(*exc)


def count_training_step(cfg, backend: str, lengths=(7, 5, 3, 1), seed: int = 0,
                        fused=None) -> Tuple[int, Dict[str, int], Counter]:
    """(total, per-component counts, per-op counts) of one training step of CMATH(cfg, backend)
    (``fused``: the triton backend's fused components, default all)."""
    from ..model import CMATH
    from ..packing import pack_rows
    from ..step import train_step
    from ..testing import random_batch

    torch.manual_seed(seed)
    model = CMATH(cfg, backend=backend, fused=fused)
    # The fused (single-kernel) Adam where torch has it, as a GPU run would use: the optimiser is
    # the same for both models and should not drown the comparison.
    try:
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, foreach=True)
    gen = torch.Generator().manual_seed(seed)
    text, audio, visual, speakers, lens, labels = random_batch(cfg, list(lengths), gen)
    # The packed layout is built on the host before the step, as the trainer does.
    rows = pack_rows(lens, text.shape[1]) if model.packs() else None
    # one warm-up step so that lazily created optimiser state is not counted
    for counting in (False, True):
        counter = OpCounter()
        with skip_value_checks(), (counter if counting else contextlib.nullcontext()):
            train_step(model, opt, (text, audio, visual, speakers, lens), labels, epoch=1, rows=rows)
    return sum(counter.counts.values()), dict(counter.counts), counter.ops
