"""A kernel that does not fit the GPU, or a Triton error of any kind, reaches the user as one line
naming the kernel, its tile, the device and the remedy (the component switch that avoids it);
never as a Triton traceback without --debug."""

import pytest
import torch

from cmath_fast import cli
from cmath_fast.kernels import _common


class _Kernel:
    """Stands in for a JITFunction whose launch fails with ``exc``."""

    __name__ = "_row_conv_fwd_kernel"

    def __init__(self, exc):
        self.exc = exc

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            raise self.exc
        return run


def _out_of_shared_memory():
    from triton.runtime.errors import OutOfResources
    return OutOfResources(131072, 101376, "shared memory")


def test_out_of_resources_names_kernel_tile_and_device():
    with pytest.raises(_common.KernelResourceError) as err:
        _common.launch(_Kernel(_out_of_shared_memory()), (1,), 1, 2, BLOCK_M=128, BLOCK_N=64, num_warps=8,
                       num_stages=3, HAS_BIAS=True)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("kernel _row_conv_fwd_kernel (tile BLOCK_M 128, BLOCK_N 64, num_warps 8, num_stages 3)")
    assert "needs 131072 of shared memory" in msg and "allows 101376" in msg and "CMATH_FAST_AUTOTUNE=1" in msg
    assert isinstance(err.value, RuntimeError) and err.value.kernel == "_row_conv_fwd_kernel"


def test_other_launch_errors_pass_through_unchanged():
    with pytest.raises(ValueError, match="bad argument"):
        _common.launch(_Kernel(ValueError("bad argument")), (1,))


def _smoke_raising(monkeypatch, exc):
    from cmath_fast.model import CMATH

    def forward(self, *args, **kwargs):
        raise exc
    monkeypatch.setattr(CMATH, "forward", forward)
    return cli.main(["smoke", "--backend", "torch"])


def test_cli_reports_a_kernel_that_does_not_fit_in_one_line_with_the_switch(monkeypatch, capsys):
    err = _common.KernelResourceError("_row_conv_fwd_kernel", "BLOCK_M 128", "NVIDIA GeForce RTX 3090 (sm_86)",
                                      "shared memory", 131072, 101376)
    assert _smoke_raising(monkeypatch, err) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "RTX 3090 (sm_86)" in lines[0]
    assert "--fused attention,fusion,norms,loss,packing (or CMATH_FAST_FUSED=attention,fusion,norms,loss,packing)" in lines[0]


def test_cli_reports_a_bare_triton_error_in_one_line(monkeypatch, capsys):
    # raised outside our launch hook (by an autotuner's benchmark, say): still one line
    exc = _out_of_shared_memory()
    assert not isinstance(exc, RuntimeError) and type(exc).__module__.startswith("triton")
    assert _smoke_raising(monkeypatch, exc) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cmath-fast smoke: error: Triton OutOfResources: out of "
                                                   "resource: shared memory"), lines
    assert "--debug" in lines[0] and "cmath-fast doctor" in lines[0]


def test_debug_shows_the_triton_traceback(monkeypatch):
    err = _common.KernelResourceError("_ln_fwd_kernel", "BLOCK_R 8", "sm_75", "shared memory", 1, 0)
    monkeypatch.setenv("CMATH_FAST_DEBUG", "1")
    with pytest.raises(_common.KernelResourceError):
        _smoke_raising(monkeypatch, err)


def test_untested_device_warning_is_one_line_in_the_cli(monkeypatch, capsys):
    import warnings
    from cmath_fast.backend import UntestedDeviceWarning

    def forward(self, *args, **kwargs):
        warnings.warn("backend 'triton' on Tesla T4 (sm_75, family sm75): untested", UntestedDeviceWarning)
        return torch.zeros(())
    from cmath_fast.model import CMATH
    monkeypatch.setattr(CMATH, "forward", forward)
    monkeypatch.setattr(CMATH, "loss", lambda self, out, labels: (_ for _ in ()).throw(ValueError("stop")))
    assert cli.main(["smoke", "--backend", "torch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "cmath-fast smoke: error: stop"
    assert err[0] == "cmath-fast: warning: backend 'triton' on Tesla T4 (sm_75, family sm75): untested", err
