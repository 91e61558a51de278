"""Under Triton's interpreter the tests round fp32 -> bf16 to nearest even, as a GPU does (see
tests/interpreter_rounding.py): a kernel's bf16 store equals torch's conversion bit for bit."""

import os

import pytest
import torch
import triton
import triton.language as tl

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="only the CPU interpreter needs (and gets) the rounding fix")


@triton.jit
def _store_bf16(X, Y, N, BLOCK: tl.constexpr):
    o = tl.arange(0, BLOCK)
    tl.store(Y + o, tl.load(X + o, mask=o < N).to(tl.bfloat16), mask=o < N)


def test_interpreter_rounds_bf16_as_a_gpu():
    from tests.conftest import INTERPRETER_ROUNDING
    if INTERPRETER_ROUNDING != "installed":
        pytest.skip(f"the rounding fix is {INTERPRETER_ROUNDING} (another Triton's interpreter)")
    x = torch.randn(1000) * torch.logspace(-30, 30, 1000)
    x[:3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    y = torch.empty(1000, dtype=torch.bfloat16)
    _store_bf16[(1,)](x, y, 1000, BLOCK=1024)
    want = x.to(torch.bfloat16)
    assert torch.equal(y[3:].view(torch.int16), want[3:].view(torch.int16))
    assert torch.isnan(y[0]) and y[1] == float("inf") and y[2] == -float("inf")
