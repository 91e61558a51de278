"""An epoch, not only a step: the trainer's loop over the training dialogues of a synthetic
preset (host batches from pinned memory, copied without blocking, the trainer's Adam) and an
evaluation pass over the same dialogues, in dialogues per second (the ``items_per_s`` column).
Providers: the reference model (eager), the fused model stepped eagerly (triton), the fused model
replayed from CUDA graphs, one per shape bucket (triton_graph: the trainer's default on CUDA).
Precision: bf16-mixed, the trainer's default on CUDA."""

import pytest
import torch

from cmath_fast import CMATH
from cmath_fast.bench.providers import EPOCH_PROVIDERS
from cmath_fast.data.dataset import feature_stats, iterate_batches
from cmath_fast.data.synthetic import make_synthetic
from cmath_fast.graphs import GraphedPredictor, GraphedTrainer
from cmath_fast.step import train_step
from cmath_fast.training.configure import config_for_data
from cmath_fast.training.evaluation import predict_dialogues

PRECISION = "bf16-mixed"
CLIP = 5.0  # the trainer's default --clip-grad-norm


def _params():
    for preset in ("iemocap", "meld"):
        for op in ("cmath_train_epoch", "cmath_eval_epoch"):
            for provider in EPOCH_PROVIDERS:
                quick = preset == "iemocap" and provider != "triton"
                yield pytest.param(preset, op, provider, marks=[pytest.mark.quick] if quick else [],
                                   id=f"{preset}-{op}-{provider}")


@pytest.mark.parametrize("preset, op, provider", list(_params()))
def test_epoch(record, preset, op, provider):
    data = make_synthetic(preset)
    dialogues = data.split("train")
    cfg, _ = config_for_data(data)  # the preset's batch size, as `cmath-fast train` uses it
    BATCH = cfg.batch_size
    torch.manual_seed(0)
    model = CMATH(cfg, backend="torch" if provider == "eager" else "triton")
    model.set_feature_stats(feature_stats(dialogues))
    model.cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5, fused=True, capturable=True)
    graphed = provider == "triton_graph"

    if op == "cmath_train_epoch":
        runner = GraphedTrainer(model, opt, batch_size=BATCH, precision=PRECISION, max_grad_norm=CLIP) if graphed else None

        def run():
            model.train()
            gen = torch.Generator().manual_seed(0)
            total = None
            for batch in iterate_batches(dialogues, BATCH, shuffle=True, generator=gen, pin=True,
                                         bucket=runner.bucket if runner else None):
                if runner is not None:
                    total = runner.step(batch, epoch=5)[0]
                else:
                    b = (batch.with_rows() if model.packs() else batch).to("cuda")
                    total = train_step(model, opt, b.inputs(), b.labels, 5, CLIP, precision=PRECISION,
                                       rows=b.rows)[0]
            return total
    else:
        predictor = GraphedPredictor(model, batch_size=BATCH, precision=PRECISION) if graphed else None

        def run():
            return predict_dialogues(model, dialogues, BATCH, "cuda", PRECISION, predictor=predictor,
                                     cuda_graphs=graphed)
    run()
    record(run, dict(op=op, shape=f"synthetic-{preset}", mode="fwd+bwd" if "train" in op else "fwd",
                     dtype=PRECISION, provider=provider), items=len(dialogues))
