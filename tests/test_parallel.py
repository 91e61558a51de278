"""Seeds and sweeps in parallel (``--devices cpu:N`` on a machine without GPUs: N processes, each with
its share of the cores): the same results as the same seeds run one after another, one folder and
lock per seed, one table per sweep, and one-line errors for a bad device list or grid."""

import json
import os

import pytest
import torch

from cmath_fast.cli import main
from cmath_fast.training.parallel import parse_devices


def test_parse_devices():
    assert parse_devices("cpu:2") == ["cpu", "cpu"]
    assert parse_devices(None) == []
    for spec, message in (("cpu:0", "cpu:N with N >= 1"), ("gpu", "not a GPU index")):
        with pytest.raises(ValueError, match=message):
            parse_devices(spec)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no GPU is visible"):
            parse_devices("auto")
        with pytest.raises(ValueError, match="GPU 0 is not visible"):
            parse_devices("0")


def _metrics(folder):
    with open(os.path.join(folder, "metrics.json")) as fh:
        return json.load(fh)


def test_parallel_seeds_equal_sequential_seeds(tmp_path):
    common = ["--seeds", "2", "--epochs", "2", "--no-progress", "--set", "dropout=0.1"]
    assert main(["train", *common, "--out", str(tmp_path / "seq")]) == 0
    assert main(["train", *common, "--out", str(tmp_path / "par"), "--devices", "cpu:2"]) == 0
    seq, par = _metrics(tmp_path / "seq"), _metrics(tmp_path / "par")
    for a, b in zip(seq["per_seed"], par["per_seed"]):
        assert a["seed"] == b["seed"] and a["epoch"] == b["epoch"]
        assert abs(a["accuracy"] - b["accuracy"]) <= 1e-6 and abs(a["weighted_f1"] - b["weighted_f1"]) <= 1e-6
    assert abs(seq["weighted_f1_std"] - par["weighted_f1_std"]) <= 1e-6
    for k in range(2):  # each seed in its own folder, with its own checkpoint, and no lock left behind
        folder = tmp_path / "par" / f"seed{k}"
        assert (folder / "best.safetensors").is_file() and not any(n.endswith(".lock") for n in os.listdir(folder))


def test_sweep_two_settings_two_seeds_prints_its_table(tmp_path, capsys):
    """The README's example: two settings x two seeds over two CPU processes."""
    out = str(tmp_path / "sweep")
    argv = ["sweep", "--grid", "lr=1e-3,5e-4", "--seeds", "2", "--epochs", "1", "--devices", "cpu:2",
            "--no-progress", "--out", out]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| lr | seeds | accuracy | weighted F1 |" in printed and "| 0.001 | 2 |" in printed
    rows = open(os.path.join(out, "sweep.csv")).read().splitlines()
    assert rows[0].startswith("lr,seeds,accuracy") and len(rows) == 3
    assert sorted(os.listdir(out)) == ["lr=0.0005", "lr=0.001", "sweep.csv", "sweep.md"]
    for cell in ("lr=0.0005", "lr=0.001"):
        cfg = json.load(open(os.path.join(out, cell, "seed0", "config.json")))
        assert cfg["lr"] == float(cell.split("=")[1])
    # the folder now holds a sweep: refused without --resume or --overwrite, continued with --resume
    assert main(argv) == 2
    assert "holds a sweep" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0


@pytest.mark.parametrize("grid, message", [
    ("nosuch=1,2", "not a config field or a training option"),
    ("lr=fast", "'fast' is not a number"),
    ("epochs=1,1", "a value is given twice"),
    ("device=cpu", "not a config field or a training option"),
])
def test_bad_grids_are_one_line_errors(tmp_path, capsys, grid, message):
    assert main(["sweep", "--grid", grid, "--epochs", "1", "--no-progress", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_failing_run_does_not_lose_the_others(tmp_path, monkeypatch, capsys):
    from cmath_fast.training import loop
    real = loop.train_one

    def flaky(cfg, data, opts, out_dir, log=print):
        if opts.lr == 5e-4 and out_dir.endswith("seed1"):
            raise RuntimeError("simulated failure")
        return real(cfg, data, opts, out_dir, log)
    monkeypatch.setattr(loop, "train_one", flaky)
    out = str(tmp_path / "s")
    assert main(["sweep", "--grid", "lr=1e-3,5e-4", "--seeds", "2", "--epochs", "1", "--no-progress",
                 "--out", out]) == 2
    err = capsys.readouterr().err
    assert "1 of 4 runs failed (lr=0.0005/seed1: RuntimeError: simulated failure)" in err
    assert len(open(os.path.join(out, "sweep.csv")).read().splitlines()) == 2  # the finished cell
    assert os.path.isfile(os.path.join(out, "lr=0.0005", "seed0", "metrics.json"))


def test_sweep_refuses_ddp(tmp_path, capsys):
    assert main(["sweep", "--grid", "lr=1e-3", "--ddp", "2", "--out", str(tmp_path / "s")]) == 2
    assert "a sweep runs its cells over --devices" in capsys.readouterr().err
