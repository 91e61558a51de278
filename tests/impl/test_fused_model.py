"""The fused CMATH (backend "triton") against the reference CMATH with the same weights."""

import os

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.backend import BackendUnavailableError
from tests.helpers import assert_close, make_batch

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")

VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param({"centrals": ("t",)}, id="text-central"),
    pytest.param({"cross_gate": "sum", "aux_self_attention": True, "num_layers": 2}, id="sum-aux-2layers"),
    pytest.param({"fusion": "poe", "centrals": ("a", "v"), "class_weights": [1, 2, 0.5, 3]}, id="poe-weighted"),
    pytest.param({"fusion": "concat", "reconstruction": False}, id="concat"),
]


def _pair(cfg):
    torch.manual_seed(0)
    ref = CMATH(cfg, backend="torch")
    fused = CMATH(cfg, backend="triton")
    fused.load_state_dict(ref.state_dict())
    return ref, fused


@needs_kernels
@pytest.mark.parametrize("overrides", VARIANTS)
def test_fused_model_equals_reference(overrides):
    cfg = CMATHConfig.tiny(dropout=0.0, **overrides)
    ref, fused = _pair(cfg)
    assert list(ref.state_dict()) == list(fused.state_dict())
    assert (ref.impl.name, fused.impl.name) == ("torch", "triton")
    batch = make_batch(cfg, [5, 0, 1, 3])
    eps = torch.randn(4, 5, cfg.d_z)
    results = []
    for model in (ref, fused):
        out = model(*batch[:5], eps=eps)
        loss, _ = model.loss(out, batch[5], epoch=3)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((out, grads))
    (r, rg), (f, fg) = results
    assert_close(f.logits, r.logits, atol=2e-5, name="logits")
    for c in cfg.centrals:
        assert_close(f.fine_logits[c], r.fine_logits[c], atol=2e-5, name=f"fine logits {c}")
    for (name, _), a, b in zip(ref.named_parameters(), fg, rg):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, atol=2e-5, rtol=1e-4, name=f"grad {name}")


@needs_kernels
def test_checkpoint_moves_between_backends(tmp_path):
    cfg = CMATHConfig.tiny()
    ref, _ = _pair(cfg)
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    fused = CMATH(cfg, backend="triton")
    fused.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    batch = make_batch(cfg, [4, 2])
    ref.eval(), fused.eval()
    assert_close(fused(*batch[:5]).logits, ref(*batch[:5]).logits, atol=2e-5, name="logits")


def test_auto_is_torch_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = CMATH(CMATHConfig.tiny(), backend="auto")
    assert model.backend == "torch" and "auto" in model.backend_reason


def test_triton_without_cuda_or_interpreter_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendUnavailableError, match="no CUDA device"):
        CMATH(CMATHConfig.tiny(), backend="triton")
