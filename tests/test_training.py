import json
import os

import numpy as np
import pytest
import torch

from cmath_fast.config import CMATHConfig
from cmath_fast.data import make_synthetic
from cmath_fast.io import atomic_write, load_checkpoint
from cmath_fast.training import (TrainOptions, check_data_matches, config_for_data, load_model,
                                 selection_split, train, train_one)


@pytest.fixture(scope="module")
def small_data():
    return make_synthetic("small", seed=0, n_dialogues=80)


def test_default_training_beats_chance(tmp_path):
    """The default run (synthetic small preset, tiny model) on a reduced budget of epochs."""
    small_data = make_synthetic("small", seed=0)
    cfg, _ = config_for_data(small_data)
    result = train_one(cfg, small_data, TrainOptions(epochs=6, batch_size=cfg.batch_size,
                                                     lr=cfg.lr, progress=False), str(tmp_path),
                       log=lambda *_: None)
    test_labels = np.concatenate([d.labels for d in small_data.split("test")])
    majority = np.bincount(test_labels).max() / len(test_labels)
    assert result["accuracy"] > majority + 0.1, (result["accuracy"], majority)
    for name in ("config.json", "metrics.json", "history.csv", "best.safetensors", "last.safetensors",
                 "curves.png", "confusion.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["weighted_f1"] <= 1
    assert set(metrics["per_class_f1"]) == set(small_data.class_names)
    assert metrics["select_on"] == "valid" and metrics["epoch"] in range(6)


def test_resume_equals_uninterrupted(tmp_path, small_data):
    cfg = CMATHConfig.tiny(d_model=16, d_z=8, num_heads=1)
    cfg, _ = config_for_data(small_data, overrides=cfg.to_dict() | {"class_names": None})
    opts = dict(epochs=3, batch_size=8, progress=False, seed=3)
    quiet = dict(log=lambda *_: None)
    train_one(cfg, small_data, TrainOptions(**opts), str(tmp_path / "full"), **quiet)
    r = train_one(cfg, small_data, TrainOptions(**opts, stop_after_epoch=0), str(tmp_path / "cut"), **quiet)
    assert r == {"interrupted_after_epoch": 0}
    resumed = train_one(cfg, small_data, TrainOptions(**opts, resume=True), str(tmp_path / "cut"), **quiet)
    full_w, _ = load_checkpoint(str(tmp_path / "full" / "last.safetensors"))
    cut_w, _ = load_checkpoint(str(tmp_path / "cut" / "last.safetensors"))
    assert set(full_w) == set(cut_w)
    for k in full_w:
        assert torch.equal(full_w[k], cut_w[k]), f"{k} differs after resume"
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert resumed["accuracy"] == full["accuracy"] and resumed["epoch"] == full["epoch"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "best.safetensors"
    atomic_write(str(path), b"old checkpoint")

    def killed(src, dst):
        raise KeyboardInterrupt("killed between the temp file and the rename")

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), b"new checkpoint")
    assert path.read_bytes() == b"old checkpoint"
    assert os.listdir(tmp_path) == ["best.safetensors"], "the temp file must be cleaned up"


def test_several_seeds_report_mean_and_std(tmp_path, small_data):
    cfg = CMATHConfig.tiny(d_model=16, d_z=8, num_heads=1)
    cfg, _ = config_for_data(small_data, overrides=cfg.to_dict() | {"class_names": None})
    result = train(cfg, small_data, TrainOptions(epochs=1, progress=False), str(tmp_path), seeds=2,
                   log=lambda *_: None)
    assert result["seeds"] == [0, 1] and len(result["per_seed"]) == 2
    assert result["accuracy"] == pytest.approx(np.mean([r["accuracy"] for r in result["per_seed"]]))
    assert "accuracy_std" in result and (tmp_path / "seed1" / "best.safetensors").is_file()


def test_select_on_valid_holds_out_ten_percent(small_data):
    train_ids, valid, test = selection_split(small_data, "valid", seed=0)
    assert len(valid) == round(0.1 * len(small_data.splits["train"]))
    assert not set(valid) & set(train_ids) and set(valid) <= set(small_data.splits["train"])
    assert selection_split(small_data, "valid", seed=0)[1] == valid
    _, sel, test2 = selection_split(small_data, "test", seed=0)
    assert sel == test2 == test


def test_checkpoint_and_data_mismatch_names_the_modality(tmp_path, small_data):
    cfg, _ = config_for_data(small_data)
    other = cfg.replace(text_dim=100)
    with pytest.raises(ValueError, match="text: the checkpoint expects dim 100 but the data has 24"):
        check_data_matches(other, small_data)


def test_load_model_round_trip(tmp_path, small_data):
    cfg, _ = config_for_data(small_data)
    train_one(cfg, small_data, TrainOptions(epochs=1, progress=False), str(tmp_path), log=lambda *_: None)
    model, meta = load_model(str(tmp_path))
    assert model.cfg == cfg and meta["select_on"] == "valid"


def test_deterministic_grouped_runs_repeat_bit_for_bit_and_restore_the_global_flag(tmp_path, small_data):
    """--deterministic --group-by-length: two runs from one seed write identical weights, and the
    process-wide deterministic setting is what it was before the run."""
    cfg = CMATHConfig.tiny(d_model=16, d_z=8, num_heads=1)
    cfg, _ = config_for_data(small_data, overrides=cfg.to_dict() | {"class_names": None})
    opts = dict(epochs=1, batch_size=8, progress=False, seed=5, deterministic=True, group_by_length=True)
    before = torch.are_deterministic_algorithms_enabled()
    for name in ("a", "b"):
        train_one(cfg, small_data, TrainOptions(**opts), str(tmp_path / name), log=lambda *_: None)
    assert torch.are_deterministic_algorithms_enabled() == before
    a, _ = load_checkpoint(str(tmp_path / "a" / "last.safetensors"))
    b, _ = load_checkpoint(str(tmp_path / "b" / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
