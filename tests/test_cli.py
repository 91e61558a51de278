import subprocess
import sys

from cmath_fast.cli import main


def test_env_lists_backends(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for key in ("torch", "triton", "backend auto ->", "cuda available"):
        assert key in out


def test_smoke_prints_loss_terms(capsys):
    assert main(["smoke", "--batch", "3", "--max-len", "5"]) == 0
    out = capsys.readouterr().out
    assert "loss terms: ce" in out and "gradients finite: True" in out


def test_bad_backend_is_one_line_error(capsys):
    assert main(["smoke", "--backend", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmath-fast smoke: error: backend: expected one of")
    assert "Traceback" not in err


def test_console_entry_point_runs():
    res = subprocess.run([sys.executable, "-m", "cmath_fast.cli", "env"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "backend torch" in res.stdout


def test_warmup_without_cuda_says_so(capsys):
    import torch
    if torch.cuda.is_available():
        import pytest
        pytest.skip("a CUDA device is present: warmup would run")
    assert main(["warmup", "--preset", "tiny"]) == 2
    assert "no CUDA device" in capsys.readouterr().err
