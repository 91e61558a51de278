"""The command line end to end, through subprocess, as a user runs it."""

import json
import subprocess
import sys

import pytest

from tests.data.lineage_files import lineage_tuple, write_pickle


def cli(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "cmath_fast.cli", *map(str, args)],
                         capture_output=True, text=True)
    if check:
        assert res.returncode == 0, f"cmath-fast {' '.join(map(str, args))} failed:\n{res.stderr}"
    return res


def test_train_evaluate_predict(tmp_path):
    data = tmp_path / "synth.safetensors"
    cli("data", "synth", "--preset", "small", "--dialogues", "40", "--out", data)
    out = tmp_path / "run"
    res = cli("train", "--data", data, "--epochs", "2", "--out", out, "--no-progress")
    assert "epoch   1" in res.stdout and "[protocol cmath-fast, selected on a seeded 10% of train]" in res.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select_on"] == "valid"

    res = cli("evaluate", "--checkpoint", out, "--data", data, "--split", "test")
    assert "weighted F1" in res.stdout and "precision" in res.stdout
    acc = float(res.stdout.split("accuracy ")[1].split(",")[0])
    assert acc == pytest.approx(metrics["accuracy"], abs=1e-4)

    pred = tmp_path / "pred.jsonl"
    cli("predict", "--checkpoint", out, "--data", data, "--out", pred)
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    assert rows and {"dialogue", "index", "label", "probabilities"} <= set(rows[0])
    assert abs(sum(rows[0]["probabilities"].values()) - 1) < 1e-4
    assert len(rows) == metrics["n_utterances"]


def test_select_on_test_is_labelled(tmp_path):
    data = tmp_path / "synth.safetensors"
    cli("data", "synth", "--dialogues", "20", "--out", data)
    res = cli("train", "--data", data, "--epochs", "1", "--select-on", "test", "--out",
              tmp_path / "run", "--no-progress")
    assert "best test epoch: optimistic" in res.stdout
    assert "best-test-epoch" in json.loads((tmp_path / "run" / "metrics.json").read_text())["selection"]


def test_protocol_lineage_is_labelled_and_explicit_flags_win(tmp_path):
    data = tmp_path / "synth.safetensors"
    cli("data", "synth", "--dialogues", "20", "--out", data)
    res = cli("train", "--data", data, "--epochs", "1", "--protocol", "lineage", "--out", tmp_path / "a",
              "--no-progress")
    assert "[protocol lineage, best test epoch: optimistic]" in res.stdout
    assert "clip-grad-norm off" in res.stdout
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["protocol"] == "lineage" and metrics["select_on"] == "test"
    res = cli("train", "--data", data, "--epochs", "1", "--protocol", "lineage", "--select-on", "valid",
              "--clip-grad-norm", "1.5", "--out", tmp_path / "b", "--no-progress")
    label = "given explicitly over the protocol: --clip-grad-norm 1.5, --select-on valid"
    assert "protocol lineage, selected on a seeded 10% of train; " + label in res.stdout
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["select_on"] == "valid" and label in metrics["protocol_label"]


def test_inspect_validate_convert_lineage_pickle(tmp_path):
    pkl = write_pickle(tmp_path / "IEMOCAP_features.pkl", lineage_tuple("mmgcn-iemocap"))
    res = cli("data", "inspect", pkl)
    assert "mmgcn-iemocap (9-tuple)" in res.stdout and "split train: 3 dialogues" in res.stdout
    assert "labels: hap" in res.stdout
    assert cli("data", "validate", pkl).stdout.startswith("ok:")
    native = tmp_path / "iemocap.safetensors"
    cli("data", "convert", pkl, native)
    assert "split test: 1 dialogues" in cli("data", "inspect", native).stdout


@pytest.mark.parametrize("content, message", [
    (b"garbage", "neither a pickle nor"),
    (b"\x80\x02(", "truncated or corrupt pickle"),
])
def test_bad_file_is_one_line_error(tmp_path, content, message):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(content)
    for args in (("data", "validate", bad), ("train", "--data", bad, "--epochs", "1")):
        res = cli(*args, check=False)
        assert res.returncode == 2
        assert message in res.stderr and "Traceback" not in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_checkpoint_data_mismatch_is_one_line_error(tmp_path):
    data = tmp_path / "synth.safetensors"
    cli("data", "synth", "--dialogues", "20", "--out", data)
    cli("train", "--data", data, "--epochs", "1", "--out", tmp_path / "run", "--no-progress")
    pkl = write_pickle(tmp_path / "f.pkl", lineage_tuple("mmgcn-iemocap", dims=(100, 100, 512)))
    res = cli("evaluate", "--checkpoint", tmp_path / "run", "--data", pkl, check=False)
    assert res.returncode == 2
    assert "text: the checkpoint expects dim 24 but the data has 100" in res.stderr
