"""GPU timing: triton.testing.do_bench (warm-up, L2 flush, CUDA events) -> median and 20/80
percentiles in microseconds, plus the peak memory of one call."""

from __future__ import annotations

from typing import Callable, Dict

import torch


def measure(fn: Callable[[], object], warmup_ms: int = 25, rep_ms: int = 100) -> Dict[str, float]:
    from triton.testing import do_bench

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
    med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
    return {"median_us": med * 1e3, "p20_us": p20 * 1e3, "p80_us": p80 * 1e3, "peak_mb": peak_mb}


def mode_callable(fn: Callable[[], object], leaves, mode: str) -> Callable[[], object]:
    """fwd: the forward; bwd: the backward of one saved forward (retain_graph); fwd+bwd: both."""
    def first(out):
        return out[0] if isinstance(out, (tuple, list)) else out

    def grad_target(out):
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        return sum((o.float() * 1.0).sum() if o.dtype != torch.bool else 0 for o in outs
                   if torch.is_tensor(o) and o.requires_grad)

    if mode == "fwd":
        def run():
            with torch.no_grad():
                return fn()
        return run
    if mode == "bwd":
        out = fn()
        first(out)
        target = grad_target(out)

        def run():
            return torch.autograd.grad(target, leaves, retain_graph=True, allow_unused=True)
        return run
    if mode == "fwd+bwd":
        def run():
            return torch.autograd.grad(grad_target(fn()), leaves, allow_unused=True)
        return run
    raise ValueError(f"unknown mode {mode!r}")


def graph_replay(fn: Callable[[], object], warmup: int = 3) -> Callable[[], None]:
    """``fn`` captured in a CUDA graph after a warm-up (``cmath_fast.graphs.capture``): a callable
    that replays it. Timing the replay measures the kernels alone — no host-side launch cost —
    beside the end-to-end time of calling ``fn``. Raises what the capture raises (an op that syncs
    the host, a provider that cannot be captured)."""
    from ..graphs import capture
    graph, _ = capture(fn, warmup)
    return graph.replay
