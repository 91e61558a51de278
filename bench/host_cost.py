"""Host cost, kernels excluded: ``python bench/host_cost.py`` (CPU is enough).

1. Around one graphed training step at the iemocap preset's R1 batch (16 dialogues, 780
   utterances, padded to 16 x 112): the main thread's critical path — drawing the batch, padding
   it to its bucket and building its packed layout, issuing the copies into the graph's static
   inputs, the bookkeeping — with the replay itself stubbed. Three input paths: the features held on
   the device (``data.device``: a step copies its indices), each batch's valid rows staged in a
   reused buffer (the fallback for a split too large for the device: a step copies those rows), and
   host-collated batches (the path before both: a step copies the padded features). Without a GPU the copies are host memcpys, not asynchronous transfers
   (pinning needs CUDA), so the host-batch path's copy time here is an upper bound of what issuing
   it costs; the index path's copies are a few kilobytes either way.
2. One eager fused training step (the tiny preset, every Triton launch stubbed): host time per
   step, and its per-op table (``torch.profiler``, CPU): what a graph removes.
3. One fused-op call:

The launchers are replaced by stubs that return preallocated outputs, so what is timed is the
Python and dispatcher work around a kernel — the part that no tile choice fixes in a launch-bound
step. Compared: the autograd.Function calling the launcher directly (the first version's form);
the same Function calling the registered operator ``torch.ops.cmath_fast.*`` (this version's
form); and ``torch.library.custom_op`` with ``register_autograd`` (the form some projects left for
its host cost), for the attention op's forward + backward at a tiny shape.
"""

from __future__ import annotations

import os
import time

import torch

os.environ.setdefault("TRITON_INTERPRET", "1")


def _stub_launchers():
    from cmath_fast.kernels import cross_modal_attention as cma
    B, L, S, H, dh = 2, 4, 3, 2, 16
    out = torch.zeros(B, L, S, H, dh)
    lse = torch.zeros(B, S, H, L)
    cma.cross_modal_attention_fwd = lambda q, k, v, *a, **k2: (out, out.clone(), lse)

    def bwd(dout, q, k, v, *a, dk=None, dv=None, **kw):
        return torch.zeros_like(q), dk, dv, torch.zeros(B, L, S, H)
    cma.cross_modal_attention_bwd = bwd
    return B, L, S, H, dh


def _time(fn, n=2000):
    for _ in range(50):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def _r1_dialogues():
    """Dialogues of the iemocap R1 batch's lengths, at the iemocap feature widths."""
    import numpy as np

    from cmath_fast.bench.shapes import MODEL_SHAPES
    from cmath_fast.data.dataset import Dialogue
    rng = np.random.default_rng(0)
    dims = (1024, 1582, 342)
    return [Dialogue(i, *(rng.standard_normal((n, d), dtype=np.float32) for d in dims),
                     rng.integers(0, 2, n), rng.integers(0, 6, n))
            for i, n in enumerate(MODEL_SHAPES["iemocap-d1024"].lengths)]


class _StubGraph:
    def replay(self):
        pass


def graphed_step_critical_path(n=200):
    """{path: {stage: microseconds}} around one graphed step, replay stubbed (see the module)."""
    from cmath_fast import CMATH, CMATHConfig
    from cmath_fast.data.dataset import collate
    from cmath_fast.data.device import DeviceDialogues, StagedDialogues
    from cmath_fast.graphs import GraphedTrainer, _Captured, _key
    from cmath_fast.training.loop import EpochTerms
    dialogues = _r1_dialogues()
    model = CMATH(CMATHConfig.tiny(), backend="triton")
    chunk = list(range(len(dialogues)))
    out = {}
    for path in ("features on the device", "valid rows staged (--device-data off)", "host-collated batches (before)"):
        store = DeviceDialogues(dialogues, "cpu") if path.startswith("features") else None
        staged = StagedDialogues(dialogues) if path.startswith("valid") else None
        runner = GraphedTrainer(model, torch.optim.Adam(model.parameters()), batch_size=16, capture=False,
                                store=store, terms=EpochTerms(1))
        runner.capture = True  # the replay path, with a stub graph in place of a captured one

        def draw():
            shape = runner.bucket(len(chunk), max(len(d) for d in dialogues))
            if store is not None:
                return store.index_batch(chunk, shape)
            if staged is not None:
                return staged.staged_batch(chunk, shape)
            return collate([dialogues[i] for i in chunk], shape)
        first = runner._padded(draw())
        runner.graphs[_key(first)] = _Captured(_StubGraph(), first.to("cpu"), (torch.zeros(()), {}))
        stages = {"draw the batch": _time(draw, n), "pad and pack its layout": _time(lambda: runner._padded(draw()), n)}
        batch = draw()
        stages["the whole step (draw, layout, copies, replay stubbed)"] = _time(
            lambda: runner.step(draw(), epoch=5), n)
        stages["copies into the static inputs"] = stages["the whole step (draw, layout, copies, replay stubbed)"] \
            - stages["pad and pack its layout"]
        moved = sum(t.numel() * t.element_size() for t in
                    (batch.tensors() if store is not None or staged is not None else
                     (batch.text, batch.audio, batch.visual, batch.speakers, batch.lengths, batch.labels)))
        stages["bytes copied per step"] = moved
        out[path] = stages
    return out


def eager_step_host_cost(n=30):
    """(microseconds per eager fused training step at the tiny preset with every Triton launch
    stubbed, the profiler's per-op table as text)."""
    from cmath_fast import CMATH, CMATHConfig
    from cmath_fast._checks import skip_value_checks
    from cmath_fast.kernels import _common
    from cmath_fast.step import train_step
    from cmath_fast.testing import random_batch
    cfg = CMATHConfig.tiny(dropout=0.1)
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton")
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    batch = random_batch(cfg, [11, 7, 5, 3], torch.Generator().manual_seed(0))
    launches = [0]

    def stub(kernel, grid, args, kwargs):
        launches[0] += 1
    saved, _common._launch = _common._launch, stub
    try:
        with skip_value_checks():
            def step():
                train_step(model, opt, batch[:5], batch[5], epoch=5)
            us = _time(step, n)
            launches[0] = 0
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
    finally:
        _common._launch = saved
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return us, launches[0], table


def main():
    print("around one graphed training step, iemocap R1 batch (16 dialogues, 780 utterances), replay stubbed:")
    for path, stages in graphed_step_critical_path().items():
        print(f"  {path}:")
        for stage, v in stages.items():
            print(f"    {stage:<58} {v:10.0f} {'bytes' if stage.startswith('bytes') else 'us'}")
    us, n_launch, table = eager_step_host_cost()
    print(f"\none eager fused training step, tiny preset, Triton launches stubbed: {us:.0f} us on the host, "
          f"{n_launch} kernel launches; per op:")
    print(table)
    print()
    B, L, S, H, dh = _stub_launchers()
    from cmath_fast.ops import _library
    from cmath_fast.ops.cross_modal_attention import PackedKVAttentionFunction
    q = torch.randn(B, L, H, dh, requires_grad=True)
    kv = torch.randn(S, B, L, 2, H, dh, requires_grad=True)
    gates = torch.rand(B, L, S, H, requires_grad=True)
    lens = torch.tensor([4, 2], dtype=torch.int32)
    kv_len = lens.expand(S, B)

    def step():
        out = PackedKVAttentionFunction.apply(q, kv, gates, lens, kv_len, 0.25, 0.0, None, False)
        out.backward(torch.ones_like(out))

    results = {}
    registered = _library._REGISTERED
    _library._REGISTERED = False
    results["autograd.Function -> launcher (before)"] = _time(step)
    _library._REGISTERED = registered
    if registered:
        results["autograd.Function -> torch.ops.cmath_fast (now)"] = _time(step)
    if hasattr(torch.library, "custom_op"):
        @torch.library.custom_op("cmath_fast_hostcost::attn", mutates_args=())
        def attn(q: torch.Tensor, kv: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
            return _library._cma_fwd(q, kv[:, :, :, 0], kv[:, :, :, 1], gates, lens, kv_len, None, 0.25, 0.0,
                                     False, True)[0]

        @attn.register_fake
        def _(q, kv, gates):
            return q.new_empty((B, L, S, H, dh))

        def setup(ctx, inputs, output):
            ctx.save_for_backward(*inputs)

        def backward(ctx, dout):
            q_, kv_, g_ = ctx.saved_tensors
            dq, dkv, dg = _library._cma_bwd(dout, q_, kv_[:, :, :, 0], kv_[:, :, :, 1], dout, dout, dout, g_,
                                            lens, kv_len, None, 0.25, 0.0, False)
            return dq, dkv, dg.to(g_.dtype)
        attn.register_autograd(backward, setup_context=setup)

        def step_custom():
            attn(q, kv, gates).backward(torch.ones(B, L, S, H, dh))
        results["torch.library.custom_op + register_autograd"] = _time(step_custom)
    print(f"host cost per forward + backward call, kernels stubbed (torch {torch.__version__}):")
    for name, us in results.items():
        print(f"  {name:<50} {us:8.1f} us")


if __name__ == "__main__":
    main()
