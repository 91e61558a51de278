"""The fused CMATH (backend "triton") against the reference CMATH with the same weights."""

import fnmatch
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
    pytest.param({"joint_softmax": True, "ffn_activation": "relu"}, id="joint-relu"),
    pytest.param({"ffn_activation": "silu", "aux_self_attention": True}, id="silu-aux"),
    pytest.param({"rec_skip": False, "rec_kernel_size": 5}, id="noskip-k5"),
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


@needs_kernels
@pytest.mark.parametrize("activation", ["relu", "silu"])
def test_activation_changes_both_paths_alike(activation):
    cfg = CMATHConfig.tiny(dropout=0.0)
    ref, fused = _pair(cfg.replace(ffn_activation=activation))
    gelu_ref, _ = _pair(cfg)
    batch = make_batch(cfg, [5, 2, 3])
    for m in (ref, fused, gelu_ref):
        m.eval()
    r, f, g = (m(*batch[:5]).logits for m in (ref, fused, gelu_ref))
    assert_close(f, r, atol=2e-5, name=f"logits with {activation}")
    assert (r - g).abs().max() > 1e-4, "the activation must change the result"


def _all_logits(out):
    return torch.cat([out.logits] + [out.fine_logits[c] for c in sorted(out.fine_logits)], dim=-1)


def _dropouts(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}


@needs_kernels
@pytest.mark.parametrize("which", ["cma.*.layers.0.dropout", "cma.*.layers.0.ffn.dropout",
                                   "fine_heads.*.1", "aux_encoders.*.dropout", "embed_dropout",
                                   "encoders.*.dropout"])
def test_dropout_rates_are_read_from_the_modules(which):
    """Rate 1 on one kind of dropout module (every other at 0): deterministic in training mode, so
    the two implementations agree exactly — and differ from rate 0 — only if the fused path reads
    those modules' rate and applies it where the reference does."""
    cfg = CMATHConfig.tiny(dropout=0.0, aux_self_attention=True)
    ref, fused = _pair(cfg)
    batch = make_batch(cfg, [5, 2, 3])
    eps = torch.zeros(3, 5, cfg.d_z)
    results = []
    for model in (ref, fused):
        model.train()
        before = _all_logits(model(*batch[:5], eps=eps))
        picked = [m for name, m in _dropouts(model).items() if fnmatch.fnmatch(name, which)]
        assert picked, sorted(_dropouts(model))
        for m in picked:
            m.p = 1.0
        results.append((before, _all_logits(model(*batch[:5], eps=eps))))
    (r0, r1), (f0, f1) = results
    assert_close(f1, r1, atol=2e-5, name=f"coarse and fine logits with {which} at rate 1")
    assert (r1 - r0).abs().max() > 1e-4, f"rate 1 on {which} must change the result"


@needs_kernels
def test_stacked_layers_with_different_hyper_parameters_are_refused():
    cfg = CMATHConfig.tiny(dropout=0.1)
    _, fused = _pair(cfg)
    fused.cma["a"].layers[0].ffn.dropout.p = 0.3
    batch = make_batch(cfg, [3, 2])
    with pytest.raises(ValueError, match="differ in hyper-parameters"):
        fused(*batch[:5])


def test_activation_table_matches_config_choices():
    from cmath_fast.config import _CHOICES
    from cmath_fast.reference import ACTIVATIONS
    assert set(ACTIVATIONS) == set(_CHOICES["ffn_activation"])
