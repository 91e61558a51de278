"""cross_modal_attention of one CMA layer (3 centrals x 3 streams), every provider side by side."""

import pytest
import torch

from cmath_fast.bench.providers import (ATTENTION_PROVIDERS, Unavailable, attention_inputs,
                                        attention_leaves, attention_provider, check_attention)
from cmath_fast.bench.shapes import ATTENTION_SHAPES, attention_bytes, attention_flops

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOL = {"bf16": (3e-2, 3e-2), "fp32": (2e-3, 2e-3)}


def _params():
    for name, shape in ATTENTION_SHAPES.items():
        long = name.startswith("S")
        for mode in ("fwd", "bwd", "fwd+bwd"):
            for dtype in ("bf16", "fp32"):
                if long and dtype == "fp32":
                    continue
                for provider in ATTENTION_PROVIDERS:
                    if long and provider == "eager":
                        continue  # the eager reference materialises L x L scores: minutes per call
                    marks = [pytest.mark.quick] if shape.quick and dtype == "bf16" else []
                    yield pytest.param(name, mode, dtype, provider, marks=marks,
                                       id=f"{name}-{mode}-{dtype}-{provider}")


@pytest.mark.parametrize("shape_name, mode, dtype, provider", list(_params()))
def test_cross_modal_attention(record, record_kernels, shape_name, mode, dtype, provider):
    from cmath_fast.bench.timing import mode_callable
    shape = ATTENTION_SHAPES[shape_name]
    if shape_name.startswith("S"):
        shape = type(shape)(**{**shape.__dict__, "centrals": 1, "streams": 1})
    inp = attention_inputs(shape, DTYPES[dtype])
    try:
        fn = attention_provider(provider, inp)
    except Unavailable as exc:
        pytest.skip(str(exc))
    check_attention(fn, inp, *TOL[dtype])
    run = mode_callable(fn, attention_leaves(fn, inp), mode)
    elem = torch.finfo(DTYPES[dtype]).bits // 8
    row = dict(op="cross_modal_attention", shape=shape_name, mode=mode, dtype=dtype, provider=provider)
    work = dict(flops=attention_flops(shape, mode), nbytes=attention_bytes(shape, mode, elem))
    record(run, row, **work)
    record_kernels(run, row, **work)  # the same, kernels alone (CUDA-graph replay)
