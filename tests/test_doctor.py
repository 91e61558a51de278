"""``cmath-fast doctor``: one line per check, the summary, --json, the exit code, and a failing
component named with the switch that avoids it (a fault injected into the fused loss)."""

import json
import os

import pytest
import torch

from cmath_fast import cli, doctor

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")


@pytest.fixture
def few_checks(monkeypatch):
    """The loss and norms checks and the whole model only: the full --quick run is CI's own step."""
    every = doctor._component_checks

    def some(quick, dtype):
        return [c for c in every(quick, dtype) if c[1] in ("loss", "norms") or c[1] is None]
    monkeypatch.setattr(doctor, "_component_checks", some)


@needs_kernels
def test_report_passes_with_one_line_per_check(few_checks, capsys):
    assert cli.main(["doctor", "--quick", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("cmath-fast doctor on CPU")
    body = lines[1:-1]
    assert [line.split()[0] for line in body] == ["PASS", "PASS", "PASS", "SKIP", "PASS"], body
    assert "CUDA graphs need a CUDA device" in body[3]
    assert lines[-1] == "all 4 checks that ran passed (1 skipped)"


@needs_kernels
def test_a_failing_component_is_named_with_its_switch(few_checks, capsys, monkeypatch):
    from cmath_fast.impl import triton_impl
    fused_loss = triton_impl.cmath_loss_fused

    def wrong(*args, **kwargs):
        total, terms = fused_loss(*args, **kwargs)
        return total * 1.01, terms
    monkeypatch.setattr(triton_impl, "cmath_loss_fused", wrong)
    assert cli.main(["doctor", "--quick", "--device", "cpu", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["loss (fused)"] == "FAIL" and status["whole fused model"] == "FAIL"
    assert status["norms (stacked LayerNorm)"] == "PASS"
    assert report["passed"] is False
    assert report["summary"] == ("2 of 4 checks failed (loss): run without them: --fused "
                                 "attention,fusion,unets,norms,packing (or CMATH_FAST_FUSED=attention,fusion,"
                                 "unets,norms,packing)")
    loss = next(c for c in report["checks"] if c["name"] == "loss (fused)")
    assert loss["ratio"] > 1 and loss["detail"].startswith("worst: ")
    assert "FAIL  loss (fused)" in captured.err  # the lines go to stderr with --json


def test_summary_of_failures_outside_one_component():
    checks = [doctor.Check("CUDA graph", "fp32", doctor.FAIL), doctor.Check("x", "fp32", doctor.PASS)]
    assert doctor.summary(checks) == "1 of 2 checks failed outside any one component: use --backend torch"


def test_an_exception_is_a_failed_check_not_a_crash():
    def boom():
        raise RuntimeError("kernel X does not fit\nsecond line")
    check = doctor._timed("attention (padded)", "bf16", "attention", boom)
    assert (check.status, check.detail, check.component) == ("FAIL", "RuntimeError: kernel X does not fit", "attention")


def test_without_a_gpu_or_the_interpreter_it_says_how(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert cli.main(["doctor"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TRITON_INTERPRET=1" in err[0], err
