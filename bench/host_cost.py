"""Host cost of one fused-op call, kernels excluded: ``python bench/host_cost.py`` (CPU is enough).

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


def main():
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
