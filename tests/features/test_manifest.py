"""The manifest of one's own conversations: the rows it accepts, and a one-line error naming the row
for each kind of bad input."""

import json

import pytest

from cmath_fast.features import ManifestError, read_manifest

HEADER = "dialogue,utterance,speaker,text,audio,label,split\n"


def _write(tmp_path, body, name="m.csv", header=HEADER):
    p = tmp_path / name
    p.write_text(header + body, encoding="utf-8")
    return str(p)


@pytest.fixture
def wav(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF")  # existence is what the manifest checks
    return "a.wav"


def test_csv_and_jsonl_read_the_same(tmp_path, wav):
    csv_path = _write(tmp_path, f"d1,0,Ann,hi,{wav},happy,train\nd1,1,Bob,yo,{wav},sad,train\n"
                                f"d2,0,Bob,x,{wav},,test\n")
    rows = [dict(dialogue="d1", utterance=0, speaker="Ann", text="hi", audio=wav, label="happy"),
            dict(dialogue="d1", utterance=1, speaker="Bob", text="yo", audio=wav, label="sad"),
            dict(dialogue="d2", utterance=0, speaker="Bob", text="x", audio=wav, split="test")]
    jl = tmp_path / "m.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    for path in (csv_path, str(jl)):
        m = read_manifest(path, need_audio=True)
        assert list(m.dialogues) == ["d1", "d2"]
        assert m.speaker_ids("d1") == [0, 1] and m.speaker_ids("d2") == [0]
        assert m.dialogues["d2"][0].split == "test" and m.dialogues["d2"][0].label is None
        assert m.dialogues["d1"][0].audio == str(tmp_path / wav)  # relative to the manifest's folder
        assert m.labels(["happy", "sad"]) == {"d1": [0, 1], "d2": [-1]}


@pytest.mark.parametrize("body, need_audio, message", [
    ("d1,0,A,hi,,,\n", True, "row 1: no audio file"),
    ("d1,0,A,hi,nope.wav,,\n", False, "row 1: audio file 'nope.wav' not found"),
    ("d1,0,A,hi,,,\nd1,0,B,yo,,,\n", False, "row 2: duplicate utterance 0 of dialogue 'd1'"),
    ("d1,1,A,hi,,,\n", False, "row 1: dialogue 'd1' rows out of order: utterance 1 where 0 was expected"),
    ("d1,0,A,hi,,,\nd2,0,A,x,,,\nd1,1,A,y,,,\n", False, "row 3: dialogue 'd1' continues after other rows"),
    ("d1,x,A,hi,,,\n", False, "row 1: utterance 'x' is not a number"),
    ("d1,0,A,hi,,,holdout\n", False, "row 1: split 'holdout'"),
    ("d1,0,,hi,,,\n", False, "row 1: empty speaker"),
])
def test_bad_rows_are_one_line_errors(tmp_path, body, need_audio, message):
    with pytest.raises(ManifestError) as err:
        read_manifest(_write(tmp_path, body), need_audio=need_audio)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(str(tmp_path / "none.csv"))
    with pytest.raises(ManifestError, match="missing column\\(s\\) text"):
        read_manifest(_write(tmp_path, "d1,0,A\n", header="dialogue,utterance,speaker\n"))
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"dialogue": "d1"}\n[1]\n', encoding="utf-8")
    with pytest.raises(ManifestError, match="line 2: expected a JSON object"):
        read_manifest(str(bad))
    with pytest.raises(ManifestError, match="more than one split"):
        read_manifest(_write(tmp_path, "d1,0,A,hi,,,train\nd1,1,A,yo,,,test\n"))


def test_speakers_and_labels_are_checked(tmp_path):
    m = read_manifest(_write(tmp_path, "d1,0,A,hi,,ang,\nd1,1,B,yo,,joy,\nd1,2,C,ok,,,\n"))
    with pytest.raises(ManifestError, match="dialogue 'd1' has 3 speakers, more than the model's num_speakers 2"):
        m.check_speakers(2)
    m.check_speakers(3)
    with pytest.raises(ManifestError, match="row 2: unknown label 'joy'"):
        m.labels(["ang", "sad"])


def test_unlabelled_utterances_are_predicted_not_trained_on():
    import numpy as np

    from cmath_fast.data.dataset import DataError, Dialogue, MERData
    z = np.zeros((2, 3), dtype=np.float32)
    d = {"a": Dialogue("a", z, z, z, np.array([0, 1]), np.array([0, -1])),
         "b": Dialogue("b", z, z, z, np.array([0, 1]), np.array([-1, -1]))}
    data = MERData(dialogues=d, splits={"train": ["a"], "test": ["b"]}, class_names=("x", "y"), num_speakers=2)
    data.validate()  # -1: unlabelled, a valid file
    with pytest.raises(DataError, match="the train split has 1 unlabelled utterance"):
        data.check_trainable()
    data.splits = {"train": [], "test": ["a", "b"]}
    assert "unlabelled 3" in data.summary()[-2]
