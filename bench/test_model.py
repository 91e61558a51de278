"""The whole model: one training step (forward, loss, backward, Adam) and inference, in
dialogues per second: eager reference, torch.compile of the reference, fused (triton)."""

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.bench.providers import MODEL_PROVIDERS
from cmath_fast.bench.shapes import MODEL_SHAPES
from cmath_fast.step import train_step
from cmath_fast.testing import random_batch


def _params():
    for name, shape in MODEL_SHAPES.items():
        for step in ("cmath_train_step", "cmath_inference"):
            for provider in MODEL_PROVIDERS:
                marks = [pytest.mark.quick] if shape.quick else []
                yield pytest.param(name, step, provider, marks=marks, id=f"{name}-{step}-{provider}")


@pytest.mark.parametrize("shape_name, step, provider", list(_params()))
def test_model_step(record, shape_name, step, provider):
    shape = MODEL_SHAPES[shape_name]
    cfg = CMATHConfig.preset(shape.preset, d_model=shape.d, d_z=shape.d, num_heads=shape.heads, dropout=0.1)
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton" if provider == "triton" else "torch").cuda().to(torch.bfloat16)
    batch = random_batch(cfg, list(shape.lengths), torch.Generator().manual_seed(0), "cuda")
    text, audio, visual, speakers, lens, labels = batch
    text, audio, visual = (x.to(torch.bfloat16) for x in (text, audio, visual))
    forward = torch.compile(model) if provider == "compile" else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)

    if step == "cmath_train_step":
        model.train()
        inputs = (text, audio, visual, speakers, lens)

        def run():
            return train_step(forward, opt, inputs, labels, epoch=5)[0]
    else:
        model.eval()

        def run():
            with torch.no_grad():
                return forward(text, audio, visual, speakers, lens).logits
    out = run()
    assert torch.isfinite(out.float()).all(), "non-finite result"
    record(run, dict(op=step, shape=shape_name, mode="fwd+bwd" if step == "cmath_train_step" else "fwd",
                     dtype="bf16", provider=provider))
