"""Errors and recovery, as a user meets them: each bad input or interrupted run gets one line
(exit 2 for a user error, 1 for a failed run, 130 on Ctrl-C), nothing half-written is left behind,
and --resume continues only what it should."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.data import DataError, load_features, make_synthetic, save_native
from tests.data.lineage_files import lineage_tuple, write_pickle
from tests.helpers import make_batch

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tiny-schema1.safetensors")


def cli(*args, env=None):
    full_env = {k: v for k, v in os.environ.items() if k != "CMATH_FAST_DEBUG"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "cmath_fast.cli", *map(str, args)], capture_output=True,
                          text=True, env=full_env)


def one_line_error(res, code=2, contains=()):
    assert res.returncode == code, f"exit {res.returncode}, stderr:\n{res.stderr}"
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for text in contains:
        assert text in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.safetensors"
    save_native(make_synthetic("small", n_dialogues=20), str(path))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_data):
    out = tmp_path_factory.mktemp("runs") / "run"
    res = cli("train", "--data", small_data, "--epochs", "1", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    return out


# ------------------------------------------------------------------ non-finite values
def test_nan_config_value_is_refused(tmp_path, small_data):
    res = cli("train", "--data", small_data, "--set", "tau=NaN", "--out", tmp_path / "r")
    one_line_error(res, contains=["CMATHConfig.tau: expected a finite number, got nan"])
    assert not (tmp_path / "r" / "last.safetensors").exists()


def test_checkpoint_with_nan_weights_is_refused(tmp_path, trained, small_data):
    from safetensors import safe_open
    from safetensors.torch import save_file
    src = trained / "best.safetensors"
    with safe_open(str(src), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    name = "model/coarse_head.weight"
    tensors[name][0, 0] = float("nan")
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    res = cli("evaluate", "--checkpoint", bad, "--data", small_data)
    one_line_error(res, contains=[f"tensor {name!r} holds NaN or inf"])


def test_predictions_are_valid_json_with_nonfinite_probabilities():
    from cmath_fast.cli.train import prediction_rows
    from cmath_fast.data import Dialogue
    d = Dialogue("d0", None, None, None, None, None)
    rows = [json.loads(r, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
            for r in prediction_rows(d, np.array([[0.2, 0.8], [np.nan, 0.5]]), ("a", "b"))]
    assert rows[0]["label"] == "b" and "nonfinite" not in rows[0]
    assert rows[1] == {"dialogue": "d0", "index": 1, "label": None,
                       "probabilities": {"a": None, "b": 0.5}, "nonfinite": True}


def _nan_loss_after(n_ok):
    """A CMATH.loss that turns NaN after n_ok calls."""
    calls = {"n": 0}
    real = CMATH.loss

    def loss(self, out, labels, epoch=None):
        total, terms = real(self, out, labels, epoch)
        calls["n"] += 1
        if calls["n"] > n_ok:
            total = total * float("nan")
            terms = dict(terms, total=terms["total"] * float("nan"))
        return total, terms
    return loss


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from cmath_fast.training import TrainOptions, config_for_data, train
    from cmath_fast.training.errors import NonFiniteLossError
    data = make_synthetic("small", n_dialogues=20)
    cfg, _ = config_for_data(data)
    opts = TrainOptions(epochs=3, batch_size=8, progress=False, backend="torch")
    # epoch 0 has 2 steps; the 3rd step (epoch 1, step 0) goes NaN
    monkeypatch.setattr(CMATH, "loss", _nan_loss_after(2))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 0 \(.*total nan.*last good checkpoint"):
        train(cfg, data, opts, str(tmp_path), log=lambda *a: None)
    from cmath_fast.training.checkpoints import read_checkpoint
    _, meta, _ = read_checkpoint(str(tmp_path / "last.safetensors"))
    assert meta["epoch"] == 0, "the checkpoint of the last good epoch is intact"
    assert not os.path.exists(tmp_path / ".lock")


def test_nonfinite_loss_skip_leaves_the_weights_untouched(tmp_path, monkeypatch):
    from cmath_fast.training import TrainOptions, config_for_data, train
    data = make_synthetic("small", n_dialogues=20)
    cfg, _ = config_for_data(data)
    opts = TrainOptions(epochs=1, batch_size=8, progress=False, backend="torch", on_nonfinite="skip")
    monkeypatch.setattr(CMATH, "loss", _nan_loss_after(0))
    logs = []
    result = train(cfg, data, opts, str(tmp_path), log=logs.append)
    assert any("step skipped" in line for line in logs)
    from cmath_fast.training.checkpoints import read_checkpoint
    tensors, meta, _ = read_checkpoint(str(tmp_path / "last.safetensors"))
    assert meta["history"][0]["skipped_steps"] == 2 and "accuracy" in result
    torch.manual_seed(opts.seed)
    fresh = CMATH(cfg, backend="torch")
    assert torch.equal(tensors["model/coarse_head.weight"], fresh.state_dict()["coarse_head.weight"])


# ------------------------------------------------------------------ resume
def test_resume_refuses_changed_settings_in_one_line(tmp_path, small_data):
    out = tmp_path / "run"
    assert cli("train", "--data", small_data, "--epochs", "1", "--out", out, "--no-progress").returncode == 0
    res = cli("train", "--data", small_data, "--epochs", "2", "--out", out, "--resume", "--seed", "5",
              "--lr", "0.5", "--no-progress")
    one_line_error(res, contains=["--resume", "seed 0 -> 5", "lr 0.001 -> 0.5", "--override"])
    res = cli("train", "--data", small_data, "--epochs", "2", "--out", out, "--resume", "--set", "d_model=64")
    one_line_error(res, contains=["config d_model 32 -> 64"])
    res = cli("train", "--data", small_data, "--epochs", "2", "--out", out, "--resume", "--lr", "0.5",
              "--override", "--no-progress")
    assert res.returncode == 0, res.stderr
    recorded = json.loads((out / "resume-overrides.json").read_text())
    assert recorded[-1]["changed"] == ["lr 0.001 -> 0.5"]
    from cmath_fast.training.checkpoints import read_checkpoint
    _, meta, _ = read_checkpoint(str(out / "last.safetensors"))
    assert meta["options"]["lr"] == 0.5 and meta["optimizer"]["param_groups"][0]["lr"] == 0.5


def test_older_run_options_resume_through_defaults(tmp_path):
    from cmath_fast.training import TrainOptions
    from cmath_fast.training.rundir import resume_differences
    cfg = CMATHConfig.tiny()
    stored_cfg = cfg.to_dict()
    for key in ("schema_version", "rec_skip", "ffn_activation", "joint_softmax"):
        stored_cfg.pop(key)
    stored_opts = {"epochs": 2, "lr": 1e-3, "seed": 0}  # written before valid_fraction etc. existed
    assert resume_differences(stored_cfg, stored_opts, cfg, TrainOptions(epochs=4), 2) == []
    assert resume_differences(stored_cfg, stored_opts, cfg, TrainOptions(epochs=1), 2) == \
        ["epochs 1 < the 2 already trained"]


def test_stale_temp_files_are_cleaned_and_resume_without_checkpoint_says_so(tmp_path, small_data):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"\0" * 1000)
    res = cli("train", "--data", small_data, "--epochs", "1", "--out", out, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "no usable checkpoint" in res.stdout and "removed 1 temporary file" in res.stdout
    assert not stale.exists() and not list(out.glob(".*.tmp"))


# ------------------------------------------------------------------ one run per folder
def test_second_run_into_a_locked_folder_is_refused(tmp_path, small_data):
    import socket
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}))
    res = cli("train", "--data", small_data, "--epochs", "1", "--out", out)
    one_line_error(res, contains=[f"in use by run pid {os.getpid()}"])
    assert not (out / "config.json").exists()


def test_stale_lock_is_taken_over(tmp_path, small_data):
    import socket
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": "then"}))
    res = cli("train", "--data", small_data, "--epochs", "1", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    assert not (out / ".lock").exists()


# ------------------------------------------------------------------ bad files
def _native_with(tmp_path, mutate_meta=None, mutate_arrays=None):
    from safetensors.numpy import save
    from cmath_fast.data.native import FORMAT_KEY
    src = tmp_path / "ok.safetensors"
    save_native(make_synthetic("small", n_dialogues=6), str(src))
    from safetensors import safe_open
    with safe_open(str(src), framework="numpy") as fh:
        meta = json.loads(fh.metadata()[FORMAT_KEY])
        arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    meta = mutate_meta(meta) if mutate_meta else meta
    if mutate_arrays:
        mutate_arrays(arrays)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(save(arrays, metadata={FORMAT_KEY: json.dumps(meta)}))
    return path


def _drop(key):
    def f(meta):
        del meta[key]
        return meta
    return f


def _offsets_out_of_order(arrays):
    arrays["offsets"][2], arrays["offsets"][3] = arrays["offsets"][3], arrays["offsets"][2]


def _overlapping(arrays):
    arrays["offsets"][2] = arrays["offsets"][1] - 1


@pytest.mark.parametrize("mutate_meta, mutate_arrays, message", [
    (_drop("ids"), None, "missing 'ids'"),
    (lambda m: [m], None, "must be a JSON object, got a list"),
    (None, lambda a: a.update(audio=a["audio"][:, 0].copy()), "array 'audio' must be 2-D"),
    (None, _offsets_out_of_order, "offsets out of order"),
    (None, _overlapping, "offsets out of order"),
    (lambda m: dict(m, splits=dict(m["splits"], test=m["splits"]["test"] + ["nope"])), None,
     "split 'test' names 1 dialogue id(s) the file does not hold"),
], ids=["no-ids", "json-list", "1d-features", "out-of-order", "overlapping", "unknown-split-id"])
def test_bad_native_files_fail_validate_in_one_line(tmp_path, mutate_meta, mutate_arrays, message):
    path = _native_with(tmp_path, mutate_meta, mutate_arrays)
    one_line_error(cli("data", "validate", path), contains=[message])


def test_native_file_without_train_split_fails_validate_and_train(tmp_path):
    path = _native_with(tmp_path, lambda m: dict(m, splits={"test": m["splits"]["test"]}))
    one_line_error(cli("data", "validate", path), contains=["no train split"])
    one_line_error(cli("train", "--data", path, "--out", tmp_path / "r"), contains=["no train split"])
    assert cli("data", "inspect", path).returncode == 0


def test_string_label_in_a_pickle_names_file_and_dialogue(tmp_path):
    obj = list(lineage_tuple("mmgcn-iemocap"))
    first = next(iter(obj[2]))
    obj[2][first] = ["angry"] + list(obj[2][first][1:])
    path = write_pickle(tmp_path / "f.pkl", tuple(obj))
    one_line_error(cli("data", "validate", path), contains=[str(path), repr(first), "label 'angry'"])


def test_folder_as_data_and_cuda_without_cuda(tmp_path, small_data):
    one_line_error(cli("train", "--data", tmp_path, "--out", tmp_path / "r"), contains=["a folder"])
    if not torch.cuda.is_available():
        res = cli("train", "--data", small_data, "--device", "cuda", "--out", tmp_path / "r2")
        one_line_error(res, contains=["--device cuda: CUDA is not available"])


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--lr", "0"), ("--epochs", "0")])
def test_zero_is_not_silently_replaced(tmp_path, small_data, flag, value):
    res = cli("train", "--data", small_data, flag, value, "--out", tmp_path / "r")
    one_line_error(res, contains=[flag])


def test_debug_shows_the_traceback(tmp_path, small_data):
    res = cli("--debug", "train", "--data", small_data, "--set", "tau=NaN", "--out", tmp_path / "r")
    assert res.returncode != 0 and "Traceback" in res.stderr
    res = cli("train", "--data", small_data, "--set", "tau=NaN", "--out", tmp_path / "r",
              env={"CMATH_FAST_DEBUG": "1"})
    assert res.returncode != 0 and "Traceback" in res.stderr


def test_ctrl_c_exits_130_with_where_to_resume(monkeypatch, capsys, tmp_path):
    from cmath_fast import cli as cli_mod
    import cmath_fast.training as training

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(training, "train", interrupted)
    monkeypatch.setattr(sys, "argv", ["cmath-fast", "train", "--out", str(tmp_path / "r")])
    assert cli_mod.main(["train", "--out", str(tmp_path / "r")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0] and "--resume" in err[0] and str(tmp_path / "r") in err[0]


def test_evaluate_into_a_closed_pipe_keeps_its_out_file(tmp_path, trained, small_data):
    out = tmp_path / "m.json"
    proc = subprocess.Popen([sys.executable, "-m", "cmath_fast.cli", "evaluate", "--checkpoint", str(trained),
                             "--data", str(small_data), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    proc.wait()
    assert "Traceback" not in err and "Broken pipe" not in err, err
    assert json.loads(out.read_text())["split"] == "test"


def test_progress_to_a_file_is_one_line_per_epoch(tmp_path, small_data):
    res = cli("train", "--data", small_data, "--epochs", "2", "--out", tmp_path / "r")
    assert res.returncode == 0, res.stderr
    assert "\r" not in res.stderr and "\r" not in res.stdout
    assert sum(line.startswith("epoch ") for line in res.stdout.splitlines()) == 2


# ------------------------------------------------------------------ the Python API
def test_api_mixed_dtypes_and_empty_batch():
    cfg = CMATHConfig.tiny()
    model = CMATH(cfg, backend="torch")
    text, audio, visual, speakers, lens, _ = make_batch(cfg, [3, 2])
    with pytest.raises(TypeError, match="audio: dtype torch.float64, but text is torch.float32"):
        model(text, audio.double(), visual, speakers, lens)
    with pytest.raises(TypeError, match="the model's weights are torch.float32"):
        model(text.double(), audio.double(), visual.double(), speakers, lens)
    empty = [torch.zeros(2, 0, d) for d in (cfg.text_dim, cfg.audio_dim, cfg.visual_dim)]
    with pytest.raises(ValueError, match=r"L = 0"):
        model(*empty, speakers[:, :0], torch.zeros(2, dtype=torch.long))


def test_out_of_memory_names_the_dialogue():
    from cmath_fast.data import collate
    from cmath_fast.training.errors import explain_oom
    data = make_synthetic("small", n_dialogues=4)
    batch = collate(list(data.dialogues.values()))
    longest = max(data.dialogues.values(), key=len)
    with pytest.raises(MemoryError, match=rf"longest, {longest.id!r}, has {len(longest)} utterances.*--batch-size"):
        with explain_oom(batch, "cpu"):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")


# ------------------------------------------------------------------ versions
def test_checkpoint_from_the_first_version_loads_and_evaluates():
    from cmath_fast.training import evaluate_model, load_model
    model, meta = load_model(FIXTURE, backend="torch")
    assert meta["format"] == "cmath-fast-checkpoint-1" and "schema_version" not in meta["config"]
    assert model.cfg.rec_skip is True and model.cfg.ffn_activation == "gelu"
    data = make_synthetic("small", seed=0, n_dialogues=24)
    m = evaluate_model(model, data.split("test"), 8, "cpu", data.class_names)
    # measured with the code that wrote it: accuracy 0.1905 on these 84 utterances
    assert m["n_utterances"] == 84 and m["accuracy"] == pytest.approx(0.1905, abs=0.025)


def test_newer_schema_is_refused_in_one_line(tmp_path):
    d = CMATHConfig.tiny().to_dict()
    d["schema_version"] = 99
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        CMATHConfig.from_dict(d)


def test_every_config_checkpoint_and_metrics_carry_a_version(trained):
    from cmath_fast.config import CONFIG_SCHEMA_VERSION
    from cmath_fast.training.checkpoints import CHECKPOINT_FORMAT, read_checkpoint
    assert json.loads((trained / "config.json").read_text())["schema_version"] == CONFIG_SCHEMA_VERSION
    assert json.loads((trained / "metrics.json").read_text())["schema_version"] == CONFIG_SCHEMA_VERSION
    _, meta, _ = read_checkpoint(str(trained / "best.safetensors"))
    assert meta["format"] == CHECKPOINT_FORMAT and meta["schema_version"] == CONFIG_SCHEMA_VERSION


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)
    with pytest.raises(DataError, match="no such file"):
        load_features("/nonexistent/features.pkl")


def test_epoch_terms_find_the_first_nonfinite_step_between_reads():
    """On a GPU the host reads the loss terms every few steps: the first non-finite step and its
    terms are still the exact ones, and the means cover the finite steps only."""
    from cmath_fast.training.loop import EpochTerms
    acc = EpochTerms(every=4)
    values = [1.0, 2.0, float("nan"), 4.0, float("inf")]
    for step, v in enumerate(values):
        acc.add({"ce": torch.tensor(v), "beta": torch.tensor(0.5), "total": torch.tensor(2 * v)})
    assert [acc.due(s, s == 4) for s in range(5)] == [False, False, False, True, True]
    step, terms = acc.first_nonfinite()
    assert step == 2 and np.isnan(terms["ce"]) and np.isnan(terms["total"])
    assert acc.means() == {"ce": pytest.approx(7 / 3), "beta": 0.5, "total": pytest.approx(14 / 3)}
