"""Per-component switches of the fused implementation (``cmath_fast.components``): every subset
that leaves one component out equals the reference (logits, every loss term, every gradient), and
the op counter shows that exactly the enabled components launched their kernels."""

import os

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.bench.count_ops import count_training_step
from cmath_fast.components import (COMPONENTS, component_of_kernel, format_fused, parse_fused, resolve_fused,
                                   without)
from tests.helpers import assert_close, make_batch

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")

ALL_BUT_ONE = [pytest.param(frozenset(COMPONENTS) - {c}, id=f"no-{c}") for c in COMPONENTS]


def test_parse_and_format():
    assert parse_fused(None) == parse_fused("all") == frozenset(COMPONENTS)
    assert parse_fused("none") == parse_fused("") == frozenset()
    assert parse_fused(" loss, norms ") == {"loss", "norms"}
    assert format_fused({"norms", "attention"}) == "attention,norms"
    assert format_fused(COMPONENTS) == "all" and format_fused(()) == "none"
    with pytest.raises(ValueError, match=r"--fused: unknown component\(s\) 'flash'; expected a comma-separated subset"):
        parse_fused("attention,flash", "--fused")
    assert without("unets") == ("--fused attention,fusion,norms,loss,packing "
                                "(or CMATH_FAST_FUSED=attention,fusion,norms,loss,packing)")
    assert component_of_kernel("_cma_bwd_dq_kernel") == "attention"
    assert component_of_kernel("_rec_total_kernel") == "unets"
    assert component_of_kernel("_something_else") is None


def test_environment_wins_over_the_argument(monkeypatch):
    monkeypatch.setenv("CMATH_FAST_FUSED", "loss")
    assert resolve_fused("attention") == {"loss"}
    monkeypatch.setenv("CMATH_FAST_FUSED", "bogus")
    with pytest.raises(ValueError, match="environment variable CMATH_FAST_FUSED: unknown component"):
        resolve_fused()


def test_reference_backend_runs_nothing_fused():
    assert CMATH(CMATHConfig.tiny(), backend="torch").fused == "none"


def _compare(fused_set, overrides=None, lengths=(5, 0, 1, 3)):
    cfg = CMATHConfig.tiny(dropout=0.0, **(overrides or {}))
    torch.manual_seed(0)
    ref = CMATH(cfg, backend="torch")
    fused = CMATH(cfg, backend="triton", fused=fused_set)
    fused.load_state_dict(ref.state_dict())
    assert fused.fused == format_fused(fused_set)
    assert fused.packs() == ("packing" in fused_set)
    batch = make_batch(cfg, list(lengths))
    eps = torch.randn(len(lengths), max(lengths), cfg.d_z)
    results = []
    for model in (ref, fused):
        out = model(*batch[:5], eps=eps)
        loss, terms = model.loss(out, batch[5], epoch=3)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((out, terms, grads))
    (r, rt, rg), (f, ft, fg) = results
    assert_close(f.logits, r.logits, atol=2e-5, name="logits")
    for c in cfg.centrals:
        assert_close(f.fine_logits[c], r.fine_logits[c], atol=2e-5, name=f"fine logits {c}")
    assert set(ft) == set(rt)
    for k in rt:
        assert_close(ft[k], rt[k], atol=2e-5, rtol=1e-5, name=f"loss term {k}")
    for (name, _), a, b in zip(ref.named_parameters(), fg, rg):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_close(a, b, atol=2e-5, rtol=1e-4, name=f"grad {name}")


@needs_kernels
@pytest.mark.parametrize("fused_set", ALL_BUT_ONE)
def test_all_but_one_equals_the_reference(fused_set):
    _compare(fused_set)


@needs_kernels
@pytest.mark.parametrize("fused_set", [pytest.param(frozenset(), id="none"),
                                       pytest.param(frozenset({"attention", "packing"}), id="attention-packing")])
def test_other_subsets_equal_the_reference(fused_set):
    # the auxiliary self-attention and PoE fusion go through the same switches
    _compare(fused_set, {"aux_self_attention": True, "fusion": "poe"}, lengths=(4, 2, 1))


@needs_kernels
@pytest.mark.parametrize("fused_set", ALL_BUT_ONE + [pytest.param(frozenset(), id="none")])
def test_exactly_the_enabled_components_launch_their_kernels(fused_set):
    _, _, ops = count_training_step(CMATHConfig.tiny(), "triton", fused=fused_set)
    launched = {component_of_kernel(op[len("triton::"):]) for op in ops if op.startswith("triton::")}
    assert None not in launched, sorted(ops)
    assert launched == set(fused_set) - {"packing"}, f"launched {sorted(launched)} with {sorted(fused_set)}"


def test_run_records_the_set_and_resume_says_when_it_changes(tmp_path, capsys, monkeypatch):
    import json

    from cmath_fast import cli
    monkeypatch.delenv("CMATH_FAST_FUSED", raising=False)
    out = str(tmp_path / "run")
    common = ["train", "--synthetic", "small", "--backend", "torch", "--out", out, "--no-progress",
              "--set", "d_model=16", "--set", "num_heads=2", "--set", "d_z=8", "--batch-size", "64"]
    assert cli.main(common + ["--epochs", "1", "--fused", "loss,norms"]) == 0
    with open(tmp_path / "run" / "metrics.json") as fh:
        metrics = json.load(fh)
    assert (metrics["backend"], metrics["fused"]) == ("torch", "none")  # the reference fuses nothing
    capsys.readouterr()
    assert cli.main(common + ["--epochs", "2", "--resume", "--fused", "all"]) == 0
    text = capsys.readouterr().out
    assert "--resume: --fused norms,loss -> all: the same computation at another speed" in text, text
    with pytest.raises(SystemExit):
        cli.main(common + ["--fused"])
    assert cli.main(common + ["--epochs", "1", "--fused", "unets,fast"]) == 2
    assert "--fused: unknown component(s) 'fast'" in capsys.readouterr().err
