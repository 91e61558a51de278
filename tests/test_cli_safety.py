"""Nothing clobbered, nothing mixed: output paths that are not regular files, resume on other data,
a finished run in --out, predict to stdout, and the CLI's rough edges — each through the command
line as a subprocess, as a careless user would meet them."""

import json
import os
import stat

import pytest
import torch

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.data import make_synthetic, save_native
from tests.test_errors import cli, one_line_error


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    paths = []
    for seed in (1, 2):
        path = root / f"d{seed}.safetensors"
        save_native(make_synthetic("small", seed=seed, n_dialogues=16), str(path))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_files):
    out = tmp_path_factory.mktemp("runs") / "run"
    res = cli("train", "--data", data_files[0], "--epochs", "1", "--out", out, "--no-progress")
    assert res.returncode == 0, res.stderr
    return out


def _special_targets(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "to-null"
    link.symlink_to("/dev/null")
    return {"/dev/full": "a character device", "/dev/stdout": "a stream of this process",
            str(fifo): "a FIFO", str(link): "a character device", str(tmp_path): "a folder"}


def test_writers_refuse_anything_but_regular_files(tmp_path, run, data_files):
    targets = _special_targets(tmp_path)
    before = {p: os.stat(p).st_mode for p in ("/dev/full", "/dev/null")}
    writers = lambda target: (("predict", "--checkpoint", run, "--data", data_files[0], "--out", target),  # noqa: E731
                              ("evaluate", "--checkpoint", run, "--data", data_files[0], "--out", target),
                              ("data", "synth", "--dialogues", "4", "--out", target),
                              ("data", "convert", data_files[0], target))
    cases = [(args, "/dev/full", "a character device") for args in writers("/dev/full")]
    cases += [(writers(target)[0], target, kind) for target, kind in targets.items() if target != "/dev/full"]
    for args, target, kind in cases:
        one_line_error(cli(*args), contains=(target, kind))
    assert {p: os.stat(p).st_mode for p in before} == before
    assert all(stat.S_ISCHR(mode) for mode in before.values())
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    # a run folder that is a device
    one_line_error(cli("train", "--out", "/dev/null", "--epochs", "1"), contains=("/dev/null", "not a folder"))


def test_symlink_to_a_regular_file_writes_the_file(tmp_path, run, data_files):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    res = cli("predict", "--checkpoint", run, "--data", data_files[0], "--out", link)
    assert res.returncode == 0, res.stderr
    assert link.is_symlink() and json.loads(real.read_text().splitlines()[0])["dialogue"]


def test_predict_to_stdout_with_dash(tmp_path, run, data_files):
    res = cli("predict", "--checkpoint", run, "--data", data_files[0], "--out", "-")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert rows and all({"dialogue", "index", "label"} <= set(r) for r in rows)
    assert res.stderr.strip().endswith("written to stdout")
    assert not os.path.exists("-")
    one_line_error(cli("evaluate", "--checkpoint", run, "--data", data_files[0], "--out", "-"),
                   contains=("--out -",))


def test_resume_on_other_data_is_refused_and_runs_record_their_data(tmp_path, data_files):
    out = tmp_path / "run"
    assert cli("train", "--data", data_files[0], "--epochs", "1", "--out", out, "--no-progress").returncode == 0
    fp = json.loads((out / "metrics.json").read_text())["data"]
    assert fp["path"] == str(data_files[0]) and fp["size"] == os.path.getsize(data_files[0])
    assert len(fp["sha256"]) == 64 and set(fp["splits"]) == {"train", "test"}
    line = one_line_error(cli("train", "--data", data_files[1], "--epochs", "2", "--out", out, "--resume",
                              "--no-progress"), contains=("--resume", "data ", str(data_files[1])))
    assert "--override" in line
    one_line_error(cli("train", "--epochs", "2", "--out", out, "--resume", "--no-progress"),
                   contains=("synthetic (synthetic-small)",))
    # the same content under another name is the same data
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(data_files[0].read_bytes())
    res = cli("train", "--data", copy, "--epochs", "2", "--out", out, "--resume", "--no-progress")
    assert res.returncode == 0, res.stderr


def test_a_run_in_out_needs_resume_or_overwrite(tmp_path, data_files):
    out = tmp_path / "run"
    base = ("train", "--data", data_files[0], "--out", out, "--no-progress")
    assert cli(*base, "--epochs", "1").returncode == 0
    mtime = os.path.getmtime(out / "best.safetensors")
    one_line_error(cli(*base, "--epochs", "1"), contains=("holds a finished run", "--resume", "--overwrite"))
    assert os.path.getmtime(out / "best.safetensors") == mtime
    (out / "notes.txt").write_text("mine")
    res = cli(*base, "--epochs", "1", "--overwrite")
    assert res.returncode == 0 and "--overwrite: removed the earlier run's" in res.stdout, res.stderr
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    one_line_error(cli(*base, "--epochs", "1", "--overwrite", "--resume"), contains=("--resume and --overwrite",))


def test_flags_are_checked_before_the_data_and_a_failed_start_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    missing = tmp_path / "missing.pkl"
    for flags, text in ((("--epochs", "0"), "--epochs: expected a positive integer, got 0"),
                        (("--batch-size", "0"), "--batch-size"), (("--lr", "-1"), "--lr"),
                        (("--valid-fraction", "1.5"), "--valid-fraction"), (("--device", "banana"), "--device"),
                        (("--fused", "warp"), "--fused"), (("--seeds", "0"), "--seeds")):
        # the data file does not exist: the flag's error must come first
        one_line_error(cli("train", "--data", missing, "--out", out, *flags), contains=(text,))
    one_line_error(cli("train", "--data", missing, "--out", out), contains=(str(missing),))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file of features")
    one_line_error(cli("train", "--data", bad, "--out", out))
    assert not out.exists()


def test_bad_values_are_named_by_where_they_came_from(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"lr": -0.5}))
    line = one_line_error(cli("train", "--config", config, "--out", tmp_path / "r"), contains=("lr", "-0.5"))
    assert "--lr" not in line
    one_line_error(cli("smoke", "--device", "banana"), contains=("--device 'banana': not a device",))
    one_line_error(cli("data", "synth", "--dialogues", "0", "--out", tmp_path / "s.safetensors"),
                   contains=("--dialogues: expected an integer >= 2", "got 0"))
    one_line_error(cli("data", "synth", "--dialogues", "-5", "--out", tmp_path / "s.safetensors"),
                   contains=("got -5",))
    assert not (tmp_path / "s.safetensors").exists()


def test_config_json_records_what_the_run_used(run):
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["epochs"] == 1  # the preset says 20


def test_evaluate_on_a_multi_seed_run_names_the_seeds(tmp_path, data_files):
    out = tmp_path / "seeds"
    assert cli("train", "--data", data_files[0], "--epochs", "1", "--seeds", "2", "--out", out,
               "--no-progress").returncode == 0
    one_line_error(cli("evaluate", "--checkpoint", out, "--data", data_files[0]),
                   contains=("a run of 2 seeds (seed0, seed1)", f"--checkpoint {out / 'seed0'}"))
    assert cli("evaluate", "--checkpoint", out / "seed1", "--data", data_files[0]).returncode == 0


def test_inspect_and_validate_name_a_file_alike(tmp_path):
    path = tmp_path / "s.safetensors"
    res = cli("data", "synth", "--dialogues", "4", "--out", path)
    assert "layout: native (synthetic-small)" in res.stdout
    assert cli("data", "inspect", path).stdout.splitlines()[0] == "layout: native (synthetic-small)"
    assert "(native, synthetic-small)" in cli("data", "validate", path).stdout


def test_train_help_describes_every_flag():
    text = " ".join(cli("train", "--help").stdout.split())
    for flag, words in (("--epochs", "epochs to train (default"), ("--batch-size", "dialogues per step (default"),
                        ("--lr", "learning rate (default"), ("--out", "(default runs/latest)"),
                        ("--seed", "(default 0)"), ("--device", "cpu (default), cuda or cuda:N"),
                        ("--backend {auto,torch,triton}", "auto (default)")):
        assert flag in text and words in text, (flag, words)


def test_nan_features_are_refused_where_values_are_checked():
    cfg = CMATHConfig.tiny()
    model = CMATH(cfg, backend="torch")
    from cmath_fast.testing import random_batch
    batch = list(random_batch(cfg, [4, 2], torch.Generator().manual_seed(0)))
    batch[1][1, 3] = float("nan")  # a padded position: ignored
    model(*batch[:5])
    batch[2][0, 1, 0] = float("inf")
    with pytest.raises(ValueError, match=r"visual: NaN or inf in 1 valid utterance\(s\), the first at dialogue 0, "
                                         r"utterance 1"):
        model(*batch[:5])
