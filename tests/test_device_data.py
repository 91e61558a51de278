"""The training features held on the device (``cmath_fast.data.device``): batches gathered from
utterance indices equal the host-collated ones value for value, in the same order; the graphed
trainer takes the same steps from them and accumulates the loss terms itself (on the CPU through
the same code without capture; on a GPU with capture, under the sync-debug mode)."""

import pytest
import torch

from cmath_fast import CMATH
from cmath_fast.data import make_synthetic
from cmath_fast.data.dataset import iterate_batches
from cmath_fast.data.device import DeviceDialogues, IndexBatch, StagedBatch, StagedDialogues, keep_on_device
from cmath_fast.graphs import GraphedTrainer, bucket_length, bucket_shape
from cmath_fast.training.loop import EpochTerms


def _dialogues(n=23, seed=0):
    data = make_synthetic("small", seed=seed)
    return data.split("train")[:n]


def _config():
    from cmath_fast.training import config_for_data
    cfg, _ = config_for_data(make_synthetic("small", seed=0), dataset=None, overrides={"dropout": 0.1})
    return cfg


def _same(a, b):
    for name in ("text", "audio", "visual", "speakers", "lengths", "labels"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name
    assert a.ids == b.ids


@pytest.mark.parametrize("group", [False, True])
def test_gathered_batches_equal_collated_ones_in_the_same_order(group):
    dialogues = _dialogues()
    store = DeviceDialogues(dialogues, "cpu")
    bucket = lambda n, longest: bucket_shape(n, longest, 4)  # noqa: E731
    kw = dict(shuffle=True, bucket=bucket, group_by_length=group)
    host = list(iterate_batches(dialogues, 4, generator=torch.Generator().manual_seed(3), **kw))
    dev = list(store.batches(4, generator=torch.Generator().manual_seed(3), **kw))
    assert len(host) == len(dev) == 6
    for h, d in zip(host, dev):
        assert isinstance(d, IndexBatch) and d.shape == h.shape
        _same(d.gather(store), h)
    # padding further and packing the rows agree too
    h, d = host[-1], dev[-1]
    B, L = h.shape
    hp, dp = h.padded(B + 2, L + 8).with_rows(), d.padded(B + 2, L + 8).with_rows()
    got = dp.gather(store)
    _same(got, hp)
    assert all(torch.equal(x, y) for x, y in zip(got.rows.tensors(), hp.rows.tensors()))


def test_a_step_copies_only_indices():
    """What a step moves to the device: the (B, L) indices and the lengths, not the features."""
    dialogues = _dialogues()
    store = DeviceDialogues(dialogues, "cpu")
    b = next(store.batches(8, bucket=lambda n, longest: bucket_shape(n, longest, 8)))
    moved = sum(t.numel() * t.element_size() for t in b.tensors())
    full = sum(t.numel() * t.element_size() for t in
               (lambda g: (g.text, g.audio, g.visual, g.speakers, g.labels, g.lengths))(b.gather(store)))
    assert moved * 20 < full, (moved, full)


def test_keep_on_device_setting():
    dialogues = _dialogues(3)
    assert keep_on_device(dialogues, "cpu", torch.float32, "auto")[0]
    assert not keep_on_device(dialogues, "cpu", torch.float32, "off")[0]
    with pytest.raises(ValueError, match="--device-data: expected auto, on or off"):
        keep_on_device(dialogues, "cpu", torch.float32, "maybe")
    assert DeviceDialogues.nbytes(dialogues) == DeviceDialogues(dialogues, "cpu").features[0].shape[0] * \
        (sum(f.shape[1] for f in DeviceDialogues(dialogues, "cpu").features) * 4 + 16)


def test_graphed_trainer_on_gathered_batches_equals_the_host_path_and_counts_terms():
    """The graphed trainer's code path (no capture on a CPU) on IndexBatches: the same losses and
    weights as on host batches, and the loss terms summed into the EpochTerms it was given — the
    same sums the loop makes from the host path's terms."""
    cfg = _config()
    dialogues = _dialogues(12)
    store = DeviceDialogues(dialogues, "cpu")
    runs = []
    for use_store in (False, True):
        torch.manual_seed(0)
        model = CMATH(cfg, backend="torch")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        terms = EpochTerms(every=1)
        runner = GraphedTrainer(model, opt, batch_size=4, capture=False, store=store if use_store else None,
                                terms=terms if use_store else None)
        draw = store.batches if use_store else (lambda *a, **k: iterate_batches(dialogues, *a, **k))
        losses = []
        for step, b in enumerate(draw(4, shuffle=True, generator=torch.Generator().manual_seed(1),
                                      bucket=runner.bucket)):
            total, out = runner.step(b, epoch=3)
            if not use_store:
                terms.add(out)
            losses.append(float(total))
        runs.append((losses, [p.detach().clone() for p in model.parameters()], terms.means(),
                     int(terms.steps)))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
    assert runs[0][2] == runs[1][2] and runs[1][3] == 3


def test_epoch_terms_snapshot_restore_and_reset_keep_their_buffers():
    acc = EpochTerms(every=1)
    acc.add({"ce": torch.tensor(1.0), "beta": torch.tensor(0.5), "total": torch.tensor(2.0)})
    buffers = [acc.sums, acc.count, acc.steps, acc.bad_step]
    snap = acc.snapshot()
    acc.add({"ce": torch.tensor(float("nan")), "beta": torch.tensor(0.5), "total": torch.tensor(3.0)})
    assert acc.first_nonfinite()[0] == 1
    acc.restore(snap)
    assert acc.first_nonfinite() == (None, {}) and acc.means()["total"] == 2.0 and int(acc.steps) == 1
    acc.reset()
    assert int(acc.count) == 0 and int(acc.steps) == 0 and acc.first_nonfinite() == (None, {})
    assert all(a is b for a, b in zip(buffers, [acc.sums, acc.count, acc.steps, acc.bad_step]))


@pytest.mark.cuda
def test_captured_steps_on_gathered_batches_equal_host_batches():
    """On a GPU: graphed steps fed indices (the gather and the loss bookkeeping inside the graph),
    or staged valid rows (copied on a side stream), take the same steps as graphed steps fed host
    batches, and replays never synchronise."""
    cfg = _config()
    dialogues = _dialogues(12)
    runs = []
    for path in ("host", "store", "staged"):
        torch.manual_seed(0)
        model = CMATH(cfg, backend="triton").cuda()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True, capturable=True)
        store = DeviceDialogues(dialogues, "cuda") if path == "store" else None
        terms = EpochTerms(every=1)
        runner = GraphedTrainer(model, opt, batch_size=4, store=store, terms=terms)
        draw = store.batches if path == "store" else StagedDialogues(dialogues, pin=True).batches \
            if path == "staged" else (lambda *a, **k: iterate_batches(dialogues, *a, **k))
        losses = []
        shape = (4, bucket_length(max(len(d) for d in dialogues)))  # one bucket: one capture, then replays
        for i, b in enumerate(draw(4, generator=torch.Generator().manual_seed(1), pin=True,
                                   bucket=lambda n, longest: shape)):
            if i > 0:
                torch.cuda.set_sync_debug_mode("error")
            try:
                total, _ = runner.step(b, epoch=3)
                losses.append(total.clone())
            finally:
                torch.cuda.set_sync_debug_mode(0)
        runs.append(([float(x) for x in losses], [p.detach().clone() for p in model.parameters()], terms.means()))
    for other in runs[1:]:
        assert runs[0][0] == other[0]
        assert all(torch.equal(a, b) for a, b in zip(runs[0][1], other[1]))
        assert runs[0][2] == other[2]


@pytest.mark.parametrize("group", [False, True])
def test_staged_batches_equal_collated_ones_and_copy_only_valid_rows(group):
    """The fallback for a split too large for the device: each batch's valid rows staged (two
    reused slots), the same padded batches in the same order, and far fewer bytes to copy."""
    dialogues = _dialogues()
    staged = StagedDialogues(dialogues)
    bucket = lambda n, longest: bucket_shape(n, longest, 4)  # noqa: E731
    kw = dict(shuffle=True, bucket=bucket, group_by_length=group)
    host = list(iterate_batches(dialogues, 4, generator=torch.Generator().manual_seed(3), **kw))
    slots = set()
    for h, s in zip(host, staged.batches(4, generator=torch.Generator().manual_seed(3), **kw)):
        assert isinstance(s, StagedBatch) and s.shape == h.shape
        _same(s.gather(None), h)  # gathered before the slot is reused two batches later
        slots.add(id(s.slot))
        valid = int(h.lengths.sum())
        assert valid < s.rows_store.speakers.shape[0] <= h.lengths.shape[0] * h.shape[1] + 1
        hp, sp = h.padded(h.shape[0] + 1, h.shape[1] + 8).with_rows(), s.padded(h.shape[0] + 1, h.shape[1] + 8).with_rows()
        _same(sp.gather(None), hp)
        assert sp.key() == s.key() and all(torch.equal(x, y) for x, y in zip(sp.rows.tensors(), hp.rows.tensors()))
    assert len(slots) == 2


def test_graphed_trainer_on_staged_batches_equals_the_host_path():
    cfg = _config()
    dialogues = _dialogues(12)
    runs = []
    for staged in (False, True):
        torch.manual_seed(0)
        model = CMATH(cfg, backend="torch")
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        runner = GraphedTrainer(model, opt, batch_size=4, capture=False)
        draw = StagedDialogues(dialogues).batches if staged else (lambda *a, **k: iterate_batches(dialogues, *a, **k))
        losses = [float(runner.step(b, epoch=3)[0]) for b in draw(4, shuffle=True, generator=torch.Generator().manual_seed(1),
                                                                  bucket=runner.bucket)]
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_training_with_features_on_the_device_or_staged_is_the_same(tmp_path):
    from cmath_fast.cli import main
    for setting in ("on", "off"):
        assert main(["train", "--epochs", "2", "--no-progress", "--device-data", setting,
                     "--out", str(tmp_path / setting)]) == 0
    a = open(tmp_path / "on" / "history.csv").read().splitlines()
    b = open(tmp_path / "off" / "history.csv").read().splitlines()
    strip = lambda rows: [",".join(r.split(",")[:-2]) for r in rows]  # noqa: E731 (the times differ)
    assert strip(a) == strip(b)
