"""The whole model: one training step (forward, loss, backward, the trainer's Adam) and inference:
eager reference, torch.compile of the reference (default and reduce-overhead modes), fused
(triton), fused under torch.compile, fused replayed from CUDA graphs (what the trainer runs on
CUDA); with bf16 weights and under bf16 autocast (fp32 weights). Every provider uses the same
optimiser, the trainer's on CUDA: Adam(fused=True, capturable=True). The fused providers run the
components that CMATH_FAST_FUSED names (default all; cmath_fast.components), and their rows say
which: one run per set shows what each fused component buys."""

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.bench.providers import MODEL_PRECISIONS, MODEL_PROVIDERS
from cmath_fast.bench.roofline import model_step_work
from cmath_fast.bench.shapes import MODEL_SHAPES
from cmath_fast.data.dataset import Batch
from cmath_fast.graphs import GraphedPredictor, GraphedTrainer
from cmath_fast.step import autocast_context, train_step, weight_dtype
from cmath_fast.testing import random_batch

QUICK_PROVIDERS = ("eager", "compile_ro", "triton", "triton_graph")


def _params():
    for name, shape in MODEL_SHAPES.items():
        for step in ("cmath_train_step", "cmath_inference"):
            for precision in MODEL_PRECISIONS:
                for provider in MODEL_PROVIDERS:
                    quick = name == "iemocap-d1024" and precision == "bf16-mixed" and provider in QUICK_PROVIDERS
                    yield pytest.param(name, step, provider, precision,
                                       marks=[pytest.mark.quick] if quick else [],
                                       id=f"{name}-{step}-{provider}-{precision}")


def _forward(model, provider):
    if provider == "compile":
        return torch.compile(model)
    if provider == "compile_ro":
        return torch.compile(model, mode="reduce-overhead")
    if provider == "triton_compile":
        return torch.compile(model)
    return model


@pytest.mark.parametrize("shape_name, step, provider, precision", list(_params()))
def test_model_step(record, shape_name, step, provider, precision):
    shape = MODEL_SHAPES[shape_name]
    cfg = CMATHConfig.preset(shape.preset, d_model=shape.d, d_z=shape.d, num_heads=shape.heads, dropout=0.1)
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton" if provider.startswith("triton") else "torch").cuda()
    model = model.to(weight_dtype(precision))
    host = Batch(*random_batch(cfg, list(shape.lengths), torch.Generator().manual_seed(0), "cpu"),
                 ids=list(range(len(shape.lengths))))
    host = host.to("cpu", weight_dtype(precision))
    if model.packs():  # the packed layout from the host's lengths, as the trainer builds it
        host = host.with_rows()
    host = host.pin_memory()
    batch = host.to("cuda")
    kwargs = batch.model_kwargs()
    forward = _forward(model, provider)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True, capturable=True)
    B = len(shape.lengths)

    if step == "cmath_train_step":
        model.train()
        if provider == "triton_graph":
            runner = GraphedTrainer(model, opt, batch_size=B, precision=precision)

            def run():
                return runner.step(host, epoch=5)[0]
        else:
            def run():
                return train_step(forward, opt, batch.inputs(), batch.labels, epoch=5, precision=precision,
                                  rows=batch.rows)[0]
    else:
        model.eval()
        if provider == "triton_graph":
            predictor = GraphedPredictor(model, batch_size=B, precision=precision)

            def run():
                return predictor(host)
        else:
            def run():
                with torch.no_grad(), autocast_context(precision, "cuda"):
                    return forward(*batch.inputs(), **kwargs).logits
    out = run()
    assert torch.isfinite(out.float()).all(), "non-finite result"
    train = step == "cmath_train_step"
    flops, nbytes, serial = model_step_work(sum(p.numel() for p in model.parameters()), shape.lengths, train,
                                            weight_bytes=weight_dtype(precision).itemsize)
    if model.backend == "triton" and model.fused != "all":  # CMATH_FAST_FUSED: what each component buys
        provider = f"{provider}[fused={model.fused}]"
    record(run, dict(op=step, shape=shape_name, mode="fwd+bwd" if train else "fwd",
                     dtype=precision, provider=provider), flops=flops, nbytes=nbytes, serial_bytes=serial)
