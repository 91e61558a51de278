"""``cmath-fast features extract`` with real extractors (a tiny text encoder and image encoder saved
to a folder, the real openSMILE) on recordings written by the tests: the stored features equal a
direct call of the same extractor on the same span, an interrupted extraction resumes from its
cache, and a manifest goes through extract -> validate -> train -> predict in one piece."""

import json
import os

import numpy as np
import pytest

from cmath_fast.data import load_features
from cmath_fast.features.extract import ExtractOptions, build_extractors, extract
from cmath_fast.features.extractors import TextEncoder
from cmath_fast.features.manifest import ManifestError


def _opts(tiny_models, tmp_path, **kw):
    text, image = tiny_models
    base = dict(text_model=text, visual_model=image, frames=3, device="cpu", batch_size=4,
                cache=str(tmp_path / "cache"))
    base.update(kw)
    return ExtractOptions(**base)


def test_stored_features_are_the_extractors_own(tiny_models, recordings, tmp_path):
    import opensmile
    import soundfile as sf
    out = str(tmp_path / "feats.safetensors")
    extract(recordings, out, _opts(tiny_models, tmp_path), log=lambda m: None)
    back = load_features(out)
    assert back.dims == {"t": 32, "a": 1582, "v": 24}
    assert back.extractors["a"]["feature_set"] == "IS10" and back.extractors["t"]["pooling"] == "cls"
    assert back.extractors["v"]["frames"] == 3 and not back.extractors["v"].get("missing")
    assert back.class_names == ("hap", "sad", "neu", "ang", "exc", "fru")
    d1 = back.dialogues["d1"]
    assert d1.speakers.tolist() == [0, 1, 0] and d1.labels.tolist() == [0, 1, 2]  # happy -> hap
    assert back.splits == {"train": ["d1", "d2"], "test": ["d3"]}
    # audio: openSMILE IS10 on the second utterance's span of the stereo file, downmixed
    x, sr = sf.read(os.path.join(os.path.dirname(recordings), "call.wav"), dtype="float32", always_2d=True)
    seg = x[sr:2 * sr].mean(axis=1)
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.IS10, feature_level=opensmile.FeatureLevel.Functionals)
    want = np.asarray(smile.process_signal(seg, sr), dtype=np.float32).reshape(-1)
    np.testing.assert_allclose(d1.audio[1], want, rtol=1e-5, atol=1e-5)
    # text: the encoder's CLS state of the transcript, by a fresh instance
    enc = TextEncoder(tiny_models[0], "cls", "cpu")
    np.testing.assert_allclose(d1.text[2], enc([_utt("you are not so sad")])[0], rtol=1e-5, atol=1e-5)
    assert np.abs(back.dialogues["d2"].visual).sum() > 0 and not np.allclose(d1.audio[0], d1.audio[1])


def _utt(text):
    from cmath_fast.features.manifest import Utterance
    return Utterance("x", 0, "s", text)


def test_missing_modalities_are_zeros_of_the_asked_width(tiny_models, recordings, tmp_path):
    out = str(tmp_path / "f.safetensors")
    extract(recordings, out, _opts(tiny_models, tmp_path, audio="none", audio_dim=20, visual_model=None,
                                   visual="none", visual_dim=12), log=lambda m: None)
    back = load_features(out)
    assert back.dims == {"t": 32, "a": 20, "v": 12}
    assert all(not d.audio.any() and not d.visual.any() for d in back.dialogues.values())
    assert back.extractors["v"] == {"name": "none", "missing": True, "dim": 12}


class _Counting:
    """An extractor that counts its utterances and can fail after ``fail_after`` of them."""

    def __init__(self, inner, fail_after=None):
        self.inner, self.fail_after, self.seen = inner, fail_after, 0
        self.batch_size = getattr(inner, "batch_size", 1)

    def describe(self):
        return self.inner.describe()

    def __call__(self, utts):
        if self.fail_after is not None and self.seen + len(utts) > self.fail_after:
            raise KeyboardInterrupt
        self.seen += len(utts)
        return self.inner(utts)


def test_an_interrupted_extraction_resumes_from_its_cache(tiny_models, recordings, tmp_path):
    opts = _opts(tiny_models, tmp_path, visual="none", visual_model=None, visual_dim=8)
    base = build_extractors(opts)
    out = str(tmp_path / "f.safetensors")
    first = dict(base, a=_Counting(base["a"], fail_after=4))
    with pytest.raises(KeyboardInterrupt):
        extract(recordings, out, opts, extractors=first, log=lambda m: None)
    assert not os.path.exists(out)
    again = dict(base, t=_Counting(base["t"]), a=_Counting(base["a"]))
    messages = []
    extract(recordings, out, opts, extractors=again, log=messages.append)
    assert again["t"].seen == 0, "every transcript was cached by the first run"
    assert again["a"].seen == 8 - 4, "the audio resumes after the four cached utterances"
    assert any("4 of 8 utterances read back" in m for m in messages)
    fresh = load_features(out)
    # a changed file is extracted again
    wav = os.path.join(os.path.dirname(recordings), "d3_1.wav")
    from tests.features.conftest import write_wav
    write_wav(wav, 0.9, 300)
    third = dict(base, a=_Counting(base["a"]))
    extract(recordings, out, opts, extractors=third, log=lambda m: None)
    assert third["a"].seen == 1
    assert not np.allclose(load_features(out).dialogues["d3"].audio[1], fresh.dialogues["d3"].audio[1])


def test_bad_inputs_are_one_line_errors(tiny_models, recordings, tmp_path):
    from cmath_fast.cli import main
    out = str(tmp_path / "f.safetensors")
    text, image = tiny_models
    bad = tmp_path / "bad.csv"
    bad.write_text("dialogue,utterance,speaker,text,audio\nd1,0,A,hi,missing.wav\n")
    cases = [
        (["features", "extract", str(bad), "--out", out, "--text-model", text], "audio file 'missing.wav' not found"),
        (["features", "extract", recordings, "--out", out, "--text-model", str(tmp_path / "nope")],
         "--text-model"),
        (["features", "extract", recordings, "--out", out, "--text-model", text, "--audio", "opensmile:IS99"],
         "unknown feature set"),
        (["features", "extract", recordings, "--out", out, "--text-model", text, "--classes", "a,b"],
         "unknown label 'happy'"),
        (["features", "extract", recordings, "--out", out, "--text-model", text, "--num-speakers", "1"],
         "has 2 speakers, more than the model's num_speakers 1"),
    ]
    import contextlib
    import io
    for argv, message in cases:
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv + ["--device", "cpu", "--no-progress"])
        text_err = err.getvalue().strip()
        assert code == 2 and message in text_err and len(text_err.splitlines()) == 1, (argv, text_err)
    corrupt = tmp_path / "corrupt.csv"
    (tmp_path / "noise.wav").write_bytes(b"RIFF0000WAVEjunk")
    corrupt.write_text("dialogue,utterance,speaker,text,audio\nd1,0,A,hi,noise.wav\n")
    with pytest.raises(ManifestError, match="row 1: unreadable audio"):
        extract(str(corrupt), out, _opts(tiny_models, tmp_path, visual="none", visual_model=None), log=lambda m: None)


def test_manifest_to_predictions_end_to_end(tiny_models, recordings, tmp_path, capsys):
    """A manifest of three dialogues -> extract -> validate -> train one epoch -> predict straight
    from the manifest (the checkpoint's extractors run again) -> names and probabilities."""
    from cmath_fast.cli import main
    text, image = tiny_models
    feats = str(tmp_path / "f.safetensors")
    assert main(["features", "extract", recordings, "--out", feats, "--text-model", text, "--visual-model", image,
                 "--frames", "2", "--device", "cpu", "--no-progress"]) == 0
    assert main(["data", "validate", feats]) == 0
    run = str(tmp_path / "run")
    assert main(["train", "--data", feats, "--epochs", "1", "--out", run, "--no-progress", "--batch-size", "2",
                 "--valid-fraction", "0.5"]) == 0
    preds = str(tmp_path / "preds.jsonl")
    assert main(["predict", "--checkpoint", run, "--manifest", recordings, "--out", preds]) == 0
    rows = [json.loads(line) for line in open(preds)]
    assert [(r["dialogue"], r["index"]) for r in rows][:3] == [("d1", 0), ("d1", 1), ("d1", 2)] and len(rows) == 8
    assert rows[1]["speaker"] == "Bob"
    names = ["hap", "sad", "neu", "ang", "exc", "fru"]
    for r in rows:
        assert r["label"] in names and set(r["probabilities"]) == set(names)
        assert abs(sum(r["probabilities"].values()) - 1.0) < 1e-4
    # a checkpoint trained on features without recorded extractors is refused in one line
    synth = str(tmp_path / "synth")
    assert main(["train", "--epochs", "1", "--out", synth, "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", synth, "--manifest", recordings, "--out", preds]) == 2
    err = capsys.readouterr().err.strip()
    assert "records no feature extractors" in err and len(err.splitlines()) == 1


def test_the_readme_example_runs_as_written(tiny_models, tmp_path, monkeypatch):
    """The README's manifest and commands, with the tiny models' folders in place of hub names and
    recordings written for its file names."""
    import re
    import shlex

    from cmath_fast.cli import main
    from tests.features.conftest import write_wav
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8").read()
    section = readme[readme.index("## Your own conversations"):readme.index("## Errors and recovery")]
    manifest = re.search(r"```csv\n(.*?)```", section, re.S).group(1)
    commands = re.findall(r"^(cmath-fast .*?)(?:\s+#.*)?$", re.search(r"```bash\ncmath-fast features(.*?)```",
                                                                       section, re.S).group(0), re.M)
    assert len(commands) == 5
    (tmp_path / "conv.csv").write_text(manifest)
    (tmp_path / "new_calls.csv").write_text(manifest)
    for i, name in enumerate(("call01.wav", "call02.wav", "call03.wav")):
        write_wav(tmp_path / name, 6.0 if i == 0 else 2.0, 180 + 30 * i)
    monkeypatch.chdir(tmp_path)
    text, image = tiny_models
    for cmd in commands:
        argv = shlex.split(cmd)[1:]
        argv = [text if a == "./my-encoder" else a for a in argv]
        if argv[:2] == ["features", "extract"]:
            if "--text-model" not in argv:
                argv += ["--text-model", text]
            argv += ["--no-progress"]
        if argv[0] == "train":
            argv += ["--epochs", "1", "--no-progress", "--batch-size", "2"]
        assert main(argv) == 0, argv
    rows = [json.loads(line) for line in open(tmp_path / "preds.jsonl")]
    assert len(rows) == 5 and rows[0]["speaker"] == "agent" and rows[0]["label"] in rows[0]["probabilities"]


def test_speech_encoder_frames_folder_and_truncation(tiny_models, tiny_speech_model, tmp_path):
    """A wav2vec 2.0 encoder on 22.05 kHz audio (resampled to its 16 kHz), frames from a folder at
    the row's fps, and transcripts past the text encoder's 16 positions truncated and counted."""
    import soundfile as sf
    from PIL import Image

    from cmath_fast.features.extractors import SpeechEncoder, read_audio
    from cmath_fast.features.manifest import Utterance
    from tests.features.conftest import write_wav
    write_wav(tmp_path / "a.wav", 1.0, 220, rate=22050)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(20):
        Image.fromarray(np.full((40, 40, 3), i * 10, dtype=np.uint8)).save(frames / f"{i:04d}.png")
    long = " ".join(["hello world"] * 20)
    (tmp_path / "m.csv").write_text(
        "dialogue,utterance,speaker,text,audio,video,fps,start,end\n"
        f"d,0,A,{long},a.wav,frames,10,0,0.5\nd,1,B,short,a.wav,frames,10,0.5,1.0\n")
    text, image = tiny_models
    opts = ExtractOptions(text_model=text, audio_model=tiny_speech_model, visual_model=image, frames=2,
                          device="cpu", cache=str(tmp_path / "cache"), classes=("a", "b"))
    messages = []
    out = str(tmp_path / "f.safetensors")
    data = extract(str(tmp_path / "m.csv"), out, opts, log=messages.append)
    assert data.dims == {"t": 32, "a": 16, "v": 24}
    assert data.extractors["a"]["sample_rate"] == 16000 and data.extractors["a"]["name"] == "transformers-speech"
    assert any("1 of 2 transcripts truncated" in m for m in messages)
    assert any("truncated" in n for n in load_features(out).notes)
    u = Utterance("d", 1, "B", "short", str(tmp_path / "a.wav"), start=0.5, end=1.0)
    x, sr = read_audio(u, 16000)
    assert sr == 16000 and abs(len(x) - 8000) <= 1 and sf.info(str(tmp_path / "a.wav")).samplerate == 22050
    np.testing.assert_allclose(data.dialogues["d"].audio[1], SpeechEncoder(tiny_speech_model, "cpu")([u])[0],
                               rtol=1e-5, atol=1e-5)
    # the two utterances' frames differ (frames 0-4 against 5-9), and so do their features
    assert not np.allclose(data.dialogues["d"].visual[0], data.dialogues["d"].visual[1])


def test_unreadable_video_and_mismatched_extractors(tiny_models, recordings, tmp_path, capsys):
    from cmath_fast.cli import main
    text, image = tiny_models
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    m = tmp_path / "m.csv"
    m.write_text("dialogue,utterance,speaker,text,audio,video\nd,0,A,hi,,bad.mp4\n")
    with pytest.raises(ManifestError, match="row 1: unreadable video"):
        extract(str(m), str(tmp_path / "f.safetensors"), _opts(tiny_models, tmp_path, audio="none"), log=lambda m: None)
    # a feature file from other extractors than the checkpoint's training features: refused by name
    a = str(tmp_path / "a.safetensors")
    b = str(tmp_path / "b.safetensors")
    common = ["--text-model", text, "--visual", "none", "--device", "cpu", "--no-progress"]
    assert main(["features", "extract", recordings, "--out", a, *common]) == 0
    assert main(["features", "extract", recordings, "--out", b, *common, "--text-pooling", "mean"]) == 0
    run = str(tmp_path / "run")
    assert main(["train", "--data", a, "--epochs", "1", "--out", run, "--no-progress", "--batch-size", "2"]) == 0
    capsys.readouterr()
    assert main(["predict", "--checkpoint", run, "--data", b, "--out", str(tmp_path / "p.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert "text: the data's features were made by another extractor" in err and "pooling" in err, err
