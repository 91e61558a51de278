"""variational_fusion and poe_fusion at the model's sizes: eager, torch.compile, triton."""

import pytest
import torch

from cmath_fast.bench.providers import (FUSION_PROVIDERS, fusion_gemms, fusion_inputs, fusion_leaves,
                                        fusion_provider)
from cmath_fast.bench.shapes import FUSION_SHAPES

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@pytest.mark.parametrize("op", ["variational_fusion", "poe_fusion"])
@pytest.mark.parametrize("shape_name", list(FUSION_SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "bwd", "fwd+bwd"])
@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
@pytest.mark.parametrize("provider", FUSION_PROVIDERS)
def test_fusion(record, record_kernels, op, shape_name, mode, dtype, provider):
    from cmath_fast.bench.timing import mode_callable
    n, d = FUSION_SHAPES[shape_name]
    x = fusion_inputs(n, d, DTYPES[dtype])
    gemm = 2.0 * n * 3 * d * 2 * d if op == "variational_fusion" else 0.0
    flops = gemm * (1 if mode == "fwd" else 2 if mode == "bwd" else 3) or None
    row = dict(op=op, shape=shape_name, mode=mode, dtype=dtype, provider=provider)
    if provider == "cublas_gemms":
        if op != "variational_fusion":
            pytest.skip("the product of experts has no GEMM")
        run = fusion_gemms(x, mode)
        record(run, row, flops=flops)
        record_kernels(run, row, flops=flops)
        return
    fn = fusion_provider(op, provider, x)
    ref = fusion_provider(op, "eager", fusion_inputs(n, d, torch.float32))()
    z, kl = fn()
    tol = 5e-2 if dtype == "bf16" else 1e-3
    torch.testing.assert_close(z.float(), ref[0], atol=tol, rtol=tol)
    torch.testing.assert_close(kl.float(), ref[1], atol=tol * max(1.0, ref[1].abs().max().item()), rtol=tol)
    run = mode_callable(fn, fusion_leaves(op, x), mode)
    record(run, row, flops=flops)
    record_kernels(run, row, flops=flops)  # the same, kernels alone (CUDA-graph replay)
