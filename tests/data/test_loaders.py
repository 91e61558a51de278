import os
import pickle

import numpy as np
import pytest

from cmath_fast.data import DataError, load_features, make_synthetic, save_native
from cmath_fast.data.safe_pickle import safe_loads
from tests.data.lineage_files import lineage_tuple, write_pickle

LAYOUTS = {"sdt-iemocap": 12, "sdt-meld": 13, "mmgcn-iemocap": 9, "mmgcn-meld": 10}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("list_features", [False, True], ids=["2d", "list-of-1d"])
@pytest.mark.parametrize("set_splits", [False, True], ids=["list-splits", "set-splits"])
def test_every_layout_loads(tmp_path, layout, list_features, set_splits):
    obj = lineage_tuple(layout, list_features=list_features, set_splits=set_splits)
    path = write_pickle(tmp_path / "f.pkl", obj)
    data = load_features(str(path))
    meld = layout.endswith("meld")
    assert data.dataset == ("meld" if meld else "iemocap")
    assert f"({LAYOUTS[layout]}-tuple)" in data.layout
    assert data.dims == {"t": 6, "a": 5, "v": 4}
    assert data.num_classes == (7 if meld else 6)
    assert data.num_speakers == (9 if meld else 2)
    assert sorted(len(d) for d in data.dialogues.values()) == [1, 2, 3, 4]
    assert len(data.splits["train"]) == 3 and len(data.splits["test"]) == 1
    # values survive exactly, speakers mapped from 'M'/'F' or one-hot
    vid = data.splits["test"][0]
    raw_text = np.asarray(obj[3][vid], dtype=np.float32)
    np.testing.assert_array_equal(data.dialogues[vid].text, raw_text)
    raw_spk = obj[1][vid]
    want = [int(np.argmax(s)) for s in raw_spk] if meld else [{"M": 0, "F": 1}[s] for s in raw_spk]
    assert data.dialogues[vid].speakers.tolist() == want
    assert any("differs from the" in n for n in data.notes), "dims differ from the preset: a note says so"


def test_mf_speakers_in_a_meld_sized_tuple_are_read_as_iemocap(tmp_path):
    obj = lineage_tuple("mmgcn-meld", one_hot_speakers=False, n_classes=6)
    data = load_features(str(write_pickle(tmp_path / "f.pkl", obj)))
    assert data.dataset == "iemocap"
    assert any("speakers look like iemocap" in n for n in data.notes)


def test_python2_style_protocol_0_pickle(tmp_path):
    obj = lineage_tuple("mmgcn-iemocap")
    data = load_features(str(write_pickle(tmp_path / "f.pkl", obj, protocol=0)))
    assert len(data.dialogues) == 4


def test_known_variant_named_in_notes(tmp_path):
    obj = lineage_tuple("mmgcn-iemocap", dims=(100, 100, 512))
    notes = " ".join(load_features(str(write_pickle(tmp_path / "f.pkl", obj))).notes)
    assert "DialogueGCN" in notes and "512" in notes


def _bad_files(tmp_path):
    yield "not a pickle", b"hello world, not features", "neither a pickle nor"
    good = pickle.dumps(lineage_tuple("sdt-iemocap"), protocol=2)
    yield "truncated", good[: len(good) // 2], "truncated or corrupt pickle"
    yield "wrong length", pickle.dumps(tuple(range(7))), "a tuple of 7 items matches no known layout"
    yield "not a tuple", pickle.dumps({"a": 1}), "expected a tuple of dicts"
    obj = list(lineage_tuple("mmgcn-iemocap"))
    obj[4] = dict(obj[4])
    obj[4]["Ses00"] = obj[4]["Ses00"][:2]
    yield "lengths disagree", pickle.dumps(tuple(obj)), "audio has 2 utterances but there are 3 labels"
    obj = list(lineage_tuple("mmgcn-iemocap"))
    obj[2] = dict(obj[2])
    obj[2]["Ses01"] = [9]
    yield "label out of range", pickle.dumps(tuple(obj)), "label 9 outside the 6 classes"
    obj = list(lineage_tuple("mmgcn-iemocap"))
    obj[1] = dict(obj[1])
    obj[1]["Ses01"] = ["X"]
    yield "unknown speaker", pickle.dumps(tuple(obj)), "unknown speaker 'X'"


@pytest.mark.parametrize("case", ["not a pickle", "truncated", "wrong length", "not a tuple",
                                  "lengths disagree", "label out of range", "unknown speaker"])
def test_bad_files_give_clear_errors(tmp_path, case):
    cases = {name: (raw, msg) for name, raw, msg in _bad_files(tmp_path)}
    raw, msg = cases[case]
    path = tmp_path / "bad.pkl"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=msg):
        load_features(str(path))


def test_missing_file():
    with pytest.raises(DataError, match="no such file"):
        load_features("does/not/exist.pkl")


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _EvalExploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (eval, (f"open({self.target!r}, 'w').close()",))


@pytest.mark.parametrize("exploit", [_Exploit, _EvalExploit])
def test_malicious_pickle_runs_nothing(tmp_path, exploit):
    target = tmp_path / "pwned"
    payload = lineage_tuple("mmgcn-iemocap")[:8] + (exploit(str(target)),)
    path = write_pickle(tmp_path / "evil.pkl", payload)
    with pytest.raises(DataError, match="refused to load"):
        load_features(str(path))
    assert not target.exists(), "the malicious pickle ran code"
    with pytest.raises(Exception, match="refused"):
        safe_loads(path.read_bytes())
    assert not target.exists()
    # the payload is live: plain pickle does run it (in the test's own temp folder)
    pickle.loads(path.read_bytes())
    assert target.exists()


def test_native_round_trip_is_exact(tmp_path):
    obj = lineage_tuple("sdt-meld", list_features=True)
    src = write_pickle(tmp_path / "meld.pkl", obj)
    a = load_features(str(src))
    save_native(a, str(tmp_path / "meld.safetensors"))
    b = load_features(str(tmp_path / "meld.safetensors"))
    assert b.layout == "native" and a.dataset == b.dataset
    assert a.splits == b.splits and a.class_names == b.class_names
    assert a.num_speakers == b.num_speakers and list(a.dialogues) == list(b.dialogues)
    for vid, d in a.dialogues.items():
        e = b.dialogues[vid]
        for key in ("text", "audio", "visual", "speakers", "labels"):
            np.testing.assert_array_equal(getattr(d, key), getattr(e, key), err_msg=f"{vid} {key}")


def test_native_file_without_metadata(tmp_path):
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(3, dtype=np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="without cmath-fast feature metadata"):
        load_features(str(tmp_path / "other.safetensors"))


def test_synthetic_schema_and_quality_order():
    data = make_synthetic("small", seed=1, n_dialogues=60)
    data.validate()
    assert data.dims == {"t": 24, "a": 20, "v": 12}
    again = make_synthetic("small", seed=1, n_dialogues=60)
    d0 = next(iter(data.dialogues.values()))
    np.testing.assert_array_equal(d0.text, again.dialogues[d0.id].text)
    # a nearest-class-mean probe: text is the most informative modality, visual the least
    from sklearn.linear_model import LogisticRegression
    tr, te = data.split("train"), data.split("test")
    y = np.concatenate([d.labels for d in tr])
    yt = np.concatenate([d.labels for d in te])
    acc = {}
    for m in "tav":
        X = np.concatenate([d.feature(m) for d in tr])
        Xt = np.concatenate([d.feature(m) for d in te])
        acc[m] = LogisticRegression(max_iter=500).fit(X, y).score(Xt, yt)
    assert acc["t"] > acc["v"], acc


@pytest.mark.parametrize("preset, dims, speakers", [("iemocap", (1024, 1582, 342), 2),
                                                     ("meld", (1024, 300, 342), 9)])
def test_synthetic_presets_shaped_like_the_datasets(preset, dims, speakers):
    data = make_synthetic(preset, n_dialogues=12)
    assert tuple(data.dims.values()) == dims and data.num_speakers == speakers
