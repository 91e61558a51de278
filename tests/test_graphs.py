"""CUDA-graphed training and inference (``cmath_fast.graphs``): the shape buckets, inert padding,
and the graphed path against the eager one — on the CPU through the same code without capture,
on a GPU (cuda marker) with capture, under ``torch.cuda.set_sync_debug_mode("error")``."""

import os

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.data.dataset import Batch, collate
from cmath_fast.data.dataset import batch_indices
from cmath_fast.graphs import GraphedPredictor, GraphedTrainer, bucket_length, bucket_shape, capture_blockers
from cmath_fast.step import train_step
from tests.helpers import make_batch

NEEDS_KERNELS = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="the fused backend needs CUDA or TRITON_INTERPRET=1")


def test_buckets():
    assert [bucket_length(n) for n in (0, 1, 8, 9, 64, 65, 110, 128, 129, 300)] == \
        [8, 8, 8, 16, 64, 80, 112, 128, 256, 512]
    assert bucket_shape(3, 17, 8) == (8, 24)
    with pytest.raises(ValueError, match="exceeds the batch size"):
        bucket_shape(9, 4, 8)
    from cmath_fast.bench.padding import _cost, graph_count
    assert graph_count([10, 10, 2, 2], [[0, 1], [2, 3], [0, 1]], 2) == 2
    assert _cost([10, 10, 2, 2], [[0, 1], [2, 3]], 2) == (24, 1.0, pytest.approx((2 * 16 + 2 * 8) / 24),
                                                         pytest.approx((32 + 16) / 24))


def test_length_grouped_batches_cover_every_dialogue_once_with_less_padding():
    lengths = [int(x) for x in torch.randint(1, 60, (300,), generator=torch.Generator().manual_seed(0))]
    from cmath_fast.bench.padding import _cost
    plain = batch_indices(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(1))
    grouped = batch_indices(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(1),
                            group_by_length=True)
    again = batch_indices(lengths, 8, shuffle=True, generator=torch.Generator().manual_seed(1),
                          group_by_length=True)
    assert grouped == again  # seeded
    assert sorted(i for b in grouped for i in b) == list(range(300)) and all(len(b) <= 8 for b in grouped)
    assert _cost(lengths, grouped, 8)[1] < 0.8 * _cost(lengths, plain, 8)[1]


def test_capture_blockers_name_the_reason():
    assert any("CUDA device" in r for r in capture_blockers("cpu", "fp32"))
    r = capture_blockers("cuda", "fp16-mixed", skip_nonfinite=True,
                         optimizer=torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))
    assert len(r) == 3 and any("gradient scaler" in x for x in r) and any("skip" in x for x in r) \
        and any("capturable" in x for x in r)
    model = CMATH(CMATHConfig.tiny(), backend="torch")
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedTrainer(model, torch.optim.Adam(model.parameters()), batch_size=4, capture=True)


def _batch(cfg, lengths, seed=0):
    t, a, v, s, l, y = make_batch(cfg, lengths, seed=seed)
    return Batch(t, a, v, s, l, y, list(range(len(lengths))))


def test_collate_and_padded_agree():
    from cmath_fast.data.synthetic import make_synthetic
    data = make_synthetic("small", n_dialogues=10)
    ds = list(data.dialogues.values())[:3]
    a = collate(ds).padded(5, 48)
    b = collate(ds, (5, 48))
    for x, y in zip(a.inputs() + (a.labels,), b.inputs() + (b.labels,)):
        assert torch.equal(x, y)
    assert a.shape == (5, 48) and a.lengths[3:].tolist() == [0, 0] and (a.labels[3:] == -1).all()
    with pytest.raises(ValueError, match="do not fit"):
        collate(ds, (2, 48))


@NEEDS_KERNELS
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_padding_is_inert(backend):
    """A batch padded to its bucket (extra empty dialogues, longer length): same logits at every
    valid position, same loss terms and gradients (no dropout; same noise)."""
    cfg = CMATHConfig.tiny(dropout=0.0, attn_dropout=0.0)
    torch.manual_seed(0)
    model = CMATH(cfg, backend=backend)
    b = _batch(cfg, [7, 5, 3])
    res = []
    for bb in (b, b.padded(5, 16)):
        eps = torch.zeros(*bb.shape, cfg.d_z)
        out = model(*bb.inputs(), eps=eps)
        loss, terms = model.loss(out, bb.labels, epoch=1)
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        res.append((out.logits[:3, :7], terms, grads))
    torch.testing.assert_close(res[0][0], res[1][0], atol=2e-6, rtol=1e-5)
    for k in res[0][1]:
        torch.testing.assert_close(res[0][1][k], res[1][1][k], atol=2e-6, rtol=1e-5, msg=k)
    for (name, _), g0, g1 in zip(model.named_parameters(), res[0][2], res[1][2]):
        if g0 is not None:
            torch.testing.assert_close(g0, g1, atol=2e-6, rtol=1e-5, msg=name)


def test_graphed_trainer_without_capture_equals_train_step():
    """Same seed, same batches padded to the same buckets: the graphed trainer's code path (no
    capture on a CPU) and ``train_step`` take bit-identical steps, dropout included."""
    cfg = CMATHConfig.tiny(dropout=0.1)
    batches = [_batch(cfg, [7, 5, 3], seed=1), _batch(cfg, [20, 2], seed=2), _batch(cfg, [4], seed=3)]
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = CMATH(cfg, backend="torch")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        runner = GraphedTrainer(model, opt, batch_size=4, capture=False)
        losses = []
        for epoch, b in enumerate(batches):
            if graphed:
                total, terms = runner.step(b, epoch)
            else:
                p = b.padded(*runner.bucket(b.shape[0], int(b.lengths.max())))
                total, terms = train_step(model, opt, p.inputs(), p.labels, epoch)
            losses.append((float(total), float(terms["beta"])))
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_graphed_predictor_without_capture_matches_the_unpadded_batch():
    cfg = CMATHConfig.tiny()
    torch.manual_seed(0)
    model = CMATH(cfg, backend="torch").eval()
    b = _batch(cfg, [9, 4])
    predictor = GraphedPredictor(model, batch_size=4, capture=False)
    got = predictor(b)
    with torch.no_grad():
        want = model(*b.inputs()).logits
    assert got.shape == want.shape
    m = b.labels >= 0
    torch.testing.assert_close(got[m], want[m], atol=2e-6, rtol=1e-5)


@NEEDS_KERNELS
def test_switching_row_packing_after_construction_takes_effect():
    """The graphed classes read whether the model packs rows at every step, so a layout is built
    only while it does (and the outputs agree either way)."""
    cfg = CMATHConfig.tiny()
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton").eval()
    b = _batch(cfg, [9, 4])
    predictor = GraphedPredictor(model, batch_size=4, capture=False)
    assert predictor._padded(b).rows is not None
    packed = predictor(b)
    model.pack_rows = False
    assert predictor._padded(b).rows is None
    padded = predictor(b)
    m = b.labels >= 0
    torch.testing.assert_close(padded[m], packed[m], atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- GPU
cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_captured_steps_equal_eager_steps(backend, monkeypatch):
    """Graphed and eager runs from the same seed over the same bucketed batches: identical losses
    and weights (dropout on: the warm-up is undone, randomness drawn on the device), and the
    replays never synchronise with the host."""
    cfg = CMATHConfig.tiny(dropout=0.1, attn_dropout=0.1)
    batches = [_batch(cfg, [7, 5, 3], seed=1), _batch(cfg, [6, 2], seed=2), _batch(cfg, [8, 8, 1], seed=3)]
    runs = []  # all three in bucket (4, 8): the first is captured, the others replay
    # the reference's Conv1d weight gradient is bitwise repeatable only with cuDNN's deterministic
    # algorithms (which one benchmark mode picks may differ between the two runs)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    for capture in (False, True):
        torch.manual_seed(0)
        model = CMATH(cfg, backend=backend).cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
        runner = GraphedTrainer(model, opt, batch_size=4, capture=capture)
        losses = []
        for i, b in enumerate(batches):
            b = b.pin_memory()
            if capture and i > 0:  # a replay must not synchronise with the host
                torch.cuda.set_sync_debug_mode("error")
            try:
                total, _ = runner.step(b, epoch=1)
                losses.append(total.clone())
            finally:
                torch.cuda.set_sync_debug_mode(0)
        runs.append(([float(x) for x in losses], [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@cuda
def test_captured_inference_matches_eager():
    cfg = CMATHConfig.tiny()
    torch.manual_seed(0)
    model = CMATH(cfg, backend="triton").cuda().eval()
    predictor = GraphedPredictor(model, batch_size=4)
    for lengths in ([9, 4], [11, 3, 3], [12]):
        b = _batch(cfg, lengths)
        got = predictor(b.pin_memory()).clone()
        with torch.no_grad():
            want = model(*b.to("cuda").inputs()).logits
        m = (b.labels >= 0).cuda()
        torch.testing.assert_close(got[m], want[m], atol=1e-5, rtol=1e-5)
    assert len(predictor.graphs) == 1  # all three in the (4, 16) bucket
