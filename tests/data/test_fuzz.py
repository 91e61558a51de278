"""Fuzzing the readers (hypothesis): whatever a native file's metadata or a pickle's layout holds,
loading gives a correct result or one clean DataError line — never another exception."""

import json
import pickle

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmath_fast.data import DataError, load_features, make_synthetic, save_native
from cmath_fast.data.native import FORMAT_KEY
from tests.data.lineage_files import lineage_tuple

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)

ids_like = st.lists(st.one_of(st.sampled_from(["dlg0000", "dlg0001", "dlg0003"]), json_values), max_size=4)
field_values = st.one_of(json_values, ids_like, st.dictionaries(st.sampled_from(["train", "test", "x"]), ids_like,
                                                                max_size=3))


FIELDS = ["version", "ids", "splits", "class_names", "num_speakers", "dataset", "notes"]


def _clean_or_one_line(path):
    try:
        data = load_features(str(path))
    except DataError as exc:
        msg = str(exc)
        assert msg and "\n" not in msg, repr(msg)
        return None
    # a correct load: every split names dialogues that exist, every dialogue is consistent
    for ids in data.splits.values():
        assert all(i in data.dialogues for i in ids)
    return data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=field_values, drop=st.booleans())
def test_native_metadata_fuzz(tmp_path_factory, field, value, drop):
    from safetensors import safe_open
    from safetensors.numpy import save
    tmp = tmp_path_factory.mktemp("fuzz")
    src = tmp / "ok.safetensors"
    save_native(make_synthetic("small", n_dialogues=4), str(src))
    with safe_open(str(src), framework="numpy") as fh:
        meta = json.loads(fh.metadata()[FORMAT_KEY])
        arrays = {k: fh.get_tensor(k) for k in fh.keys()}
    if drop:
        meta.pop(field, None)
    else:
        meta[field] = value
    path = tmp / "fuzz.safetensors"
    path.write_bytes(save(arrays, metadata={FORMAT_KEY: json.dumps(meta)}))
    _clean_or_one_line(path)


element = st.one_of(st.none(), st.integers(-2, 3), st.text(max_size=3), st.lists(st.integers(0, 2), max_size=3),
                    st.just(np.zeros((2, 3), dtype=np.float32)), st.just({"x": 1}), st.just(set()))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.sampled_from(["sdt-iemocap", "sdt-meld", "mmgcn-iemocap", "mmgcn-meld"]),
       position=st.integers(0, 12), value=element, truncate=st.integers(0, 3))
def test_pickle_layout_fuzz(tmp_path_factory, layout, position, value, truncate):
    obj = list(lineage_tuple(layout))
    if position < len(obj):
        obj[position] = value
    if truncate:
        obj = obj[:-truncate]
    path = tmp_path_factory.mktemp("fuzz") / "f.pkl"
    path.write_bytes(pickle.dumps(tuple(obj), protocol=2))
    _clean_or_one_line(path)
