"""``cmath-fast doctor``: the self-test to run first on a new machine. It says exactly which fused
components work on this device, in which dtypes, and which switch avoids one that does not.

Each fused component (``cmath_fast.components``) is checked where the model calls it: the model
with only that component fused against the reference model on a small ragged batch (an empty and
a one-utterance dialogue among them), one training step's forward and backward — the logits, every
loss term and every parameter's gradient — by the 2x rule (``cmath_fast.tolerances``: our error
against a float64 reference at most twice PyTorch's own at the same dtype, plus one rounding step).
Dropout is off and the fusion noise is given, so the randomness is equal. Then the whole fused
model the same way; a CUDA-graph capture of the training step, whose replays draw fresh randomness
and equal eager steps from the same seed; and one ``torch.compile`` of a fused op, forward and
backward, against eager.

The dtypes are those the device runs: fp32 everywhere; under autocast bf16 where it is native and
fp16 on a GPU. On the CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``) at tiny
shapes; a check that cannot run here (a CUDA graph on the CPU) is SKIP with the reason.
"""

from __future__ import annotations

import contextlib
import os
import time
import traceback
from dataclasses import asdict, dataclass
from typing import Callable, List, Optional

import torch

from .components import COMPONENTS, format_fused, without
from .tolerances import max_error, two_x_bound

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass
class Check:
    """One line of the report. ``ratio``: the worst error over the 2x rule's bound (<= 1 passes);
    ``variants``: the Triton kernel variants the check compiled (on the CPU: the kernels it ran in
    the interpreter); ``component``: the switch that avoids a failure (None: not one component)."""

    name: str
    dtype: str
    status: str
    ratio: Optional[float] = None
    seconds: float = 0.0
    variants: int = 0
    detail: str = ""
    component: Optional[str] = None


# ------------------------------------------------------------------ kernel variants

class _Variants:
    """Counts the kernel variants a block compiles (on the CPU: the distinct kernels it ran)."""

    def __enter__(self):
        from .ops.introspect import compiled_variants, launched_kernels
        self._compiled = compiled_variants
        self.before = compiled_variants()
        self._launched = launched_kernels().__enter__()
        return self

    def __exit__(self, *exc):
        self._launched.__exit__(*exc)
        self.count = (self._compiled() - self.before) if torch.cuda.is_available() else len(self._launched.names)
        return False


# ------------------------------------------------------------------ the model checks

def _setup(quick: bool, device: str):
    from .config import CMATHConfig
    if device == "cpu":
        cfg = CMATHConfig.tiny(dropout=0.0)
        lengths = [5, 0, 1, 3]
    else:  # head dim 64, lengths over two attention tiles
        cfg = CMATHConfig.tiny(dropout=0.0, d_model=128, num_heads=2, d_z=64)
        lengths = [37, 0, 1, 20, 9] if not quick else [21, 0, 1, 9]
    return cfg, lengths


def _step(model, batch, eps, autocast_dtype, device):
    """One forward, loss and backward: [logits, each loss term, each gradient] (None if unused)."""
    ctx = torch.autocast(device.split(":")[0], dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx:
        out = model(*batch[:5], eps=eps)
        total, terms = model.loss(out, batch[5], epoch=3)
    grads = torch.autograd.grad(total, list(model.parameters()), allow_unused=True)
    names = ["logits"] + [f"loss {k}" for k in terms] + [f"grad {n}" for n, _ in model.named_parameters()]
    return names, [out.logits.detach()] + [v.detach() for v in terms.values()] + list(grads)


def _compare(cfg, lengths, fused, dtype, device) -> tuple:
    """(worst ratio, where) of CMATH(backend="triton", fused=fused) against the reference by the
    2x rule, one training step at ``dtype`` (fp32, or autocast to bf16/fp16)."""
    from .model import CMATH
    from .testing import random_batch
    torch.manual_seed(0)
    ref = CMATH(cfg, backend="torch")
    ours = CMATH(cfg, backend="triton", fused=fused)
    ours.load_state_dict(ref.state_dict())
    gen = torch.Generator().manual_seed(1)
    batch = random_batch(cfg, lengths, gen, device)
    eps = torch.randn(len(lengths), max(lengths), cfg.d_z, generator=gen).to(device)
    autocast = None if dtype == torch.float32 else dtype
    exact_model = CMATH(cfg, backend="torch").double()
    exact_model.load_state_dict(ref.state_dict())
    names, exact = _step(exact_model.to(device),
                         [x.double() if x.is_floating_point() else x for x in batch], eps.double(), None, device)
    _, theirs = _step(ref.to(device), batch, eps, autocast, device)
    _, mine = _step(ours.to(device), batch, eps, autocast, device)
    worst, where = 0.0, ""
    for name, o, t, x in zip(names, mine, theirs, exact):
        if x is None:
            if o is not None:
                return float("inf"), f"{name}: a gradient where the reference has none"
            continue
        if o is None:
            return float("inf"), f"{name}: no gradient where the reference has one"
        ratio = max_error(o, x) / two_x_bound(max_error(t, x), x, dtype)
        if ratio > worst:
            worst, where = ratio, name
    return worst, where


def _component_checks(quick: bool, dtype) -> List[tuple]:
    """(name, component, fused set, config overrides) of each component check, then the whole model."""
    checks = [
        ("attention (padded)", "attention", {"attention"}, {}),
        ("attention (packed rows)", "attention", {"attention", "packing"}, {}),
        ("fusion (gaussian)", "fusion", {"fusion"}, {}),
        ("fusion (poe)", "fusion", {"fusion"}, {"fusion": "poe"}),
        ("unets: row conv, standardise, L_rec", "unets", {"unets", "packing"}, {}),
        ("norms (stacked LayerNorm)", "norms", {"norms"}, {}),
        ("loss (fused)", "loss", {"loss", "packing"}, {}),
        ("packing (reference ops on rows)", "packing", {"packing"}, {}),
        ("whole fused model", None, set(COMPONENTS), {}),
    ]
    if quick and dtype != torch.float32:  # the whole model covers every component in the other dtypes
        checks = checks[-1:]
    return checks


def _timed(name, dtype, component, fn: Callable[[], tuple]) -> Check:
    t0 = time.perf_counter()
    try:
        with _Variants() as variants:
            status, ratio, detail = fn()
    except Exception as exc:  # a failing component must not stop the report
        detail = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if os.environ.get("CMATH_FAST_DEBUG") == "1":
            traceback.print_exc()
        return Check(name, dtype, FAIL, None, time.perf_counter() - t0, 0, detail, component)
    return Check(name, dtype, status, ratio, time.perf_counter() - t0, variants.count, detail, component)


def _model_check(cfg, lengths, fused, dtype, device):
    ratio, where = _compare(cfg, lengths, fused, dtype, device)
    ok = ratio <= 1.0
    return (PASS if ok else FAIL), ratio, ("" if ok else f"worst: {where}")


# ------------------------------------------------------------------ CUDA graphs, torch.compile

def _graph_check(device):
    """Three training steps on one batch, graphed and eager from the same seed, dropout on and
    learning rate 0: equal losses (the randomness is drawn on the device, replay by replay), and
    the replays' losses differ from each other (fresh randomness on each)."""
    from .config import CMATHConfig
    from .data.dataset import Batch
    from .graphs import GraphedTrainer
    from .model import CMATH
    from .testing import random_batch
    cfg = CMATHConfig.tiny(dropout=0.2, attn_dropout=0.1)
    host = Batch(*random_batch(cfg, [7, 5, 3], torch.Generator().manual_seed(2), "cpu"), ids=[0, 1, 2])
    runs = []
    for capture in (False, True):
        torch.manual_seed(0)
        model = CMATH(cfg, backend="triton").to(device)
        opt = torch.optim.Adam(model.parameters(), lr=0.0, fused=True, capturable=True)
        runner = GraphedTrainer(model, opt, batch_size=4, capture=capture)
        runs.append([float(runner.step(host.pin_memory(), epoch=1)[0]) for _ in range(3)])
    eager, graphed = runs
    if graphed != eager:
        return FAIL, None, f"graphed losses {graphed} != eager {eager}"
    if len(set(graphed)) < 3:
        return FAIL, None, f"replays repeat their randomness: losses {graphed}"
    return PASS, None, "3 replays equal eager steps; fresh randomness on each"


def _compile_check(device):
    """The stacked LayerNorm op under torch.compile, forward and backward, against eager
    (Inductor on a GPU; on the CPU the aot_eager backend, which needs no C++ compiler, traces
    the same fake and autograd rules)."""
    from .ops.layer_norm import stacked_layer_norm_op
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 48, generator=gen).to(device).requires_grad_()
    w = (torch.randn(2, 48, generator=gen) * 0.1 + 1).to(device).requires_grad_()
    b = torch.randn(2, 48, generator=gen).to(device).requires_grad_()
    dy = torch.randn(2, 5, 48, generator=gen).to(device)

    def fn(x, w, b):
        return stacked_layer_norm_op(x, w, b, 1e-5)
    backend = "inductor" if device.startswith("cuda") else "aot_eager"
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    got = compiled(x, w, b)
    grads = torch.autograd.grad(got, (x, w, b), dy)
    want = fn(x, w, b)
    wgrads = torch.autograd.grad(want, (x, w, b), dy)
    err = max(max_error(a, e) for a, e in zip((got,) + grads, (want,) + wgrads))
    scale = max(1.0, max(e.abs().max().item() for e in (want,) + wgrads))
    ratio = err / (1e-5 * scale)
    return (PASS if ratio <= 1 else FAIL), ratio, f"backend {backend}, fullgraph"


# ------------------------------------------------------------------ the report

def device_dtypes(device: str) -> List[torch.dtype]:
    from .backend import device_rules
    if not device.startswith("cuda"):
        return [torch.float32]
    rules = device_rules(device)
    return [torch.float32] + ([torch.bfloat16] if rules.bf16 else []) + [torch.float16]


def run(device: Optional[str] = None, quick: bool = False, report: Optional[Callable[[Check], None]] = None
        ) -> List[Check]:
    """Every check on ``device`` (default: the current GPU, else the CPU); ``report`` is called with
    each result as it comes."""
    from .backend import resolve_backend
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    resolve_backend("triton", device)  # refused with the reason where the kernels cannot run at all
    cfg, lengths = _setup(quick, device)
    checks: List[Check] = []

    def add(check: Check):
        checks.append(check)
        if report is not None:
            report(check)
    for dtype in device_dtypes(device):
        dname = DTYPE_NAMES[dtype]
        for name, component, fused, overrides in _component_checks(quick, dtype):
            c = cfg.replace(**overrides) if overrides else cfg
            add(_timed(name, dname, component,
                       lambda c=c, fused=fused, dtype=dtype: _model_check(c, lengths, fused, dtype, device)))
    if device.startswith("cuda"):
        add(_timed("CUDA graph: capture, 2 replays", "fp32", None, lambda: _graph_check(device)))
    else:
        add(Check("CUDA graph: capture, 2 replays", "fp32", SKIP, detail="CUDA graphs need a CUDA device"))
    add(_timed("torch.compile of one op", "fp32", "norms", lambda: _compile_check(device)))
    return checks


def format_check(c: Check) -> str:
    ratio = f"{c.ratio:.3f}" if c.ratio is not None and c.ratio != float("inf") else ("inf" if c.ratio else "-")
    line = f"{c.status:<4}  {c.name:<38} {c.dtype:<5} ratio {ratio:>6}  {c.seconds:6.1f} s  {c.variants:3d} variants"
    return line + (f"  {c.detail}" if c.detail else "")


def summary(checks: List[Check]) -> str:
    """The last line: all passed, or the components that failed and the switch that avoids them."""
    ran = [c for c in checks if c.status != SKIP]
    failed = [c for c in ran if c.status == FAIL]
    skipped = len(checks) - len(ran)
    if not failed:
        return f"all {len(ran)} checks that ran passed ({skipped} skipped)"
    bad = sorted({c.component for c in failed if c.component}, key=COMPONENTS.index)
    if not bad:
        return f"{len(failed)} of {len(ran)} checks failed outside any one component: use --backend torch"
    keep = set(COMPONENTS) - set(bad)
    switch = without(bad[0], keep | {bad[0]}) if len(bad) == 1 else \
        f"--fused {format_fused(keep)} (or CMATH_FAST_FUSED={format_fused(keep)})"
    return f"{len(failed)} of {len(ran)} checks failed ({', '.join(bad)}): run without them: {switch}"


def to_json(checks: List[Check]) -> dict:
    from .backend import device_rules
    rules = device_rules()
    return {"device": rules.describe(), "checks": [asdict(c) for c in checks],
            "passed": all(c.status != FAIL for c in checks), "summary": summary(checks)}


__all__ = ["Check", "FAIL", "PASS", "SKIP", "device_dtypes", "format_check", "run", "summary", "to_json"]
