"""The fused model as GPU users run it, checked on the CPU (Triton's interpreter): torch.compile
traces it in one graph, autocast runs it with fp32 weights, its randomness stays on the device and
is reproduced by torch.manual_seed."""

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from cmath_fast import CMATHConfig
from cmath_fast._checks import skip_value_checks
from cmath_fast.tolerances import two_x_ratio
from cmath_fast.packing import pack_rows
from tests.helpers import assert_close, make_batch
from tests.impl.test_fused_model import _pair

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")


def _step(model, batch, eps, call=None):
    out = (call if call is not None else model)(*batch[:5], eps=eps)
    loss, _ = model.loss(out, batch[5], epoch=1)
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return out.logits, grads


@pytest.mark.parametrize("overrides", [{}, {"fusion": "poe", "aux_self_attention": True}], ids=["default", "poe-aux"])
def test_compile_fullgraph_equals_eager(overrides):
    cfg = CMATHConfig.tiny(dropout=0.0, **overrides)
    _, fused = _pair(cfg)
    batch = make_batch(cfg, [5, 2, 3])
    eps = torch.randn(3, 5, cfg.d_z)
    logits, grads = _step(fused, batch, eps)
    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    c_logits, c_grads = _step(fused, batch, eps, call=compiled)
    assert_close(c_logits, logits, atol=1e-6, name="compiled logits")
    for (name, _), a, b in zip(fused.named_parameters(), c_grads, grads):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, atol=1e-6, rtol=1e-5, name=f"compiled grad {name}")


def test_autocast_bf16_within_twice_pytorchs_error():
    """flash-attention's rule: the fused model's error under autocast (against the fp32 reference)
    is at most twice the reference model's own error under the same autocast, plus a floor: bf16's
    unit roundoff (2^-8) at the value's magnitude — under autocast every gradient comes back
    rounded to bf16, so errors below one rounding step are the representation, not the method —
    and at least 1e-4 for values PyTorch gets (almost) exactly."""
    cfg = CMATHConfig.tiny(dropout=0.0)
    ref, fused = _pair(cfg)
    batch = make_batch(cfg, [5, 2, 3])
    eps = torch.randn(3, 5, cfg.d_z)
    exact = _step(ref, batch, eps)
    runs = {}
    for name, model in (("ref", ref), ("fused", fused)):
        with torch.autocast("cpu", torch.bfloat16):
            runs[name] = _step(model, batch, eps)
    def ratio(f, r, x):
        return two_x_ratio(f, r, x, torch.bfloat16, min_floor=1e-4)
    assert ratio(runs["fused"][0], runs["ref"][0], exact[0]) <= 1
    for (name, p), f, r, x in zip(ref.named_parameters(), runs["fused"][1], runs["ref"][1], exact[1]):
        if x is None:
            continue
        assert f.dtype == p.dtype, f"{name}: gradient in {f.dtype}, the weight is {p.dtype}"
        assert ratio(f, r, x) <= 1, (name, ratio(f, r, x))


class _HostReads(TorchDispatchMode):
    """Records every read of a tensor value by the host (aten._local_scalar_dense: .item(), int(),
    bool(), a value-dependent branch)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_seeds_never_leave_the_device():
    cfg = CMATHConfig.tiny(dropout=0.2, attn_dropout=0.3)
    _, fused = _pair(cfg)
    fused.train()
    batch = make_batch(cfg, [5, 2, 3])
    # The packed layout is built from host lengths (the data loader's), before the step.
    rows = pack_rows(batch[4], batch[0].shape[1])
    mode = _HostReads()
    with skip_value_checks(), mode:
        out = fused(*batch[:5], rows=rows)  # the fusion noise and attention dropout drawn in the kernels
        loss, _ = fused.loss(out, batch[5], epoch=1)
        loss.backward()
    assert mode.reads == [], f"host reads of tensor values on the op path: {mode.reads}"


def test_a_run_is_reproduced_by_manual_seed():
    cfg = CMATHConfig.tiny(dropout=0.2, attn_dropout=0.3)
    _, fused = _pair(cfg)
    fused.train()
    batch = make_batch(cfg, [5, 2, 3])
    results = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        results.append(_step(fused, batch, None))
    (a, ga), (b, gb), (c, _) = results
    assert torch.equal(a, b) and all(x is None or torch.equal(x, y) for x, y in zip(ga, gb))
    assert not torch.equal(a, c), "another seed draws other masks and noise"


def test_export_of_the_fused_model_in_eval_mode():
    cfg = CMATHConfig.tiny()
    _, fused = _pair(cfg)
    fused.eval()

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, text, audio, visual, speakers, lengths):
            return self.model(text, audio, visual, speakers, lengths).logits
    batch = make_batch(cfg, [5, 2, 3])
    wrapped = Logits(fused)
    exported = torch.export.export(wrapped, tuple(batch[:5]))
    targets = {str(n.target) for n in exported.graph.nodes}
    assert {"cmath_fast.cma_fwd.default", "cmath_fast.vf_fwd.default"} <= targets, sorted(targets)
    assert_close(exported.module()(*batch[:5]), wrapped(*batch[:5]), atol=1e-6, name="exported logits")
