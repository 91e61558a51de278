"""The whole model: one training step (forward, loss, backward, Adam) and inference: eager
reference, torch.compile of the reference, fused (triton), fused under torch.compile; with bf16
weights and under bf16 autocast (fp32 weights)."""

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.bench.providers import MODEL_PRECISIONS, MODEL_PROVIDERS
from cmath_fast.bench.roofline import model_step_work
from cmath_fast.bench.shapes import MODEL_SHAPES
from cmath_fast.step import autocast_context, train_step, weight_dtype
from cmath_fast.testing import random_batch


def _params():
    for name, shape in MODEL_SHAPES.items():
        for step in ("cmath_train_step", "cmath_inference"):
            for precision in MODEL_PRECISIONS:
                for provider in MODEL_PROVIDERS:
                    marks = [pytest.mark.quick] if shape.quick and precision == "bf16" else []
                    yield pytest.param(name, step, provider, precision, marks=marks,
                                       id=f"{name}-{step}-{provider}-{precision}")


@pytest.mark.parametrize("shape_name, step, provider, precision", list(_params()))
def test_model_step(record, shape_name, step, provider, precision):
    shape = MODEL_SHAPES[shape_name]
    cfg = CMATHConfig.preset(shape.preset, d_model=shape.d, d_z=shape.d, num_heads=shape.heads, dropout=0.1)
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton" if provider.startswith("triton") else "torch").cuda()
    model = model.to(weight_dtype(precision))
    batch = random_batch(cfg, list(shape.lengths), torch.Generator().manual_seed(0), "cuda")
    text, audio, visual, speakers, lens, labels = batch
    text, audio, visual = (x.to(weight_dtype(precision)) for x in (text, audio, visual))
    forward = torch.compile(model) if provider in ("compile", "triton_compile") else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    if step == "cmath_train_step":
        model.train()
        inputs = (text, audio, visual, speakers, lens)

        def run():
            return train_step(forward, opt, inputs, labels, epoch=5, precision=precision)[0]
    else:
        model.eval()

        def run():
            with torch.no_grad(), autocast_context(precision, "cuda"):
                return forward(text, audio, visual, speakers, lens).logits
    out = run()
    assert torch.isfinite(out.float()).all(), "non-finite result"
    train = step == "cmath_train_step"
    flops, nbytes, serial = model_step_work(sum(p.numel() for p in model.parameters()), shape.lengths, train,
                                            weight_bytes=weight_dtype(precision).itemsize)
    record(run, dict(op=step, shape=shape_name, mode="fwd+bwd" if train else "fwd",
                     dtype=precision, provider=provider), flops=flops, nbytes=nbytes, serial_bytes=serial)
