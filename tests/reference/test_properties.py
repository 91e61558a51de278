"""Property-based checks (hypothesis) of the reference attention and the safe unpickler."""

import pickle

import numpy as np
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cmath_fast.config import CMATHConfig
from cmath_fast.data.safe_pickle import safe_loads
from cmath_fast.reference import cross_modal_attention_ref


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=4), heads=st.integers(1, 3),
       streams=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_attention_matches_sdpa_on_valid_rows(lengths, heads, streams, seed):
    g = torch.Generator().manual_seed(seed)
    B, L, dh = len(lengths), max(max(lengths), 1), 4
    lens = torch.tensor(lengths)
    q = torch.randn(B, L, heads, dh, generator=g, dtype=torch.float64)
    ks = [torch.randn(B, L, heads, dh, generator=g, dtype=torch.float64) for _ in range(streams)]
    vs = [torch.randn(B, L, heads, dh, generator=g, dtype=torch.float64) for _ in range(streams)]
    out = cross_modal_attention_ref(q, ks, vs, lens, [lens] * streams)
    assert torch.isfinite(out).all()
    valid = torch.arange(L)[None, :] < lens[:, None]
    assert out[~valid].abs().max() == 0 if (~valid).any() else True
    for b in range(B):
        n = lengths[b]
        if n == 0:
            continue
        for s in range(streams):
            ref = F.scaled_dot_product_attention(q[b:b + 1, :n].transpose(1, 2), ks[s][b:b + 1, :n].transpose(1, 2),
                                                 vs[s][b:b + 1, :n].transpose(1, 2)).transpose(1, 2)
            torch.testing.assert_close(out[b:b + 1, :n, s], ref, atol=1e-10, rtol=1e-10)


_leaves = st.one_of(
    st.integers(-2 ** 40, 2 ** 40), st.floats(allow_nan=False), st.text(max_size=5), st.booleans(), st.none(),
    st.builds(lambda n, d: np.arange(n * d, dtype=np.float32).reshape(n, d), st.integers(0, 3), st.integers(1, 3)),
    st.builds(np.int64, st.integers(-100, 100)))
_trees = st.recursive(_leaves, lambda kids: st.one_of(
    st.lists(kids, max_size=4), st.tuples(kids, kids), st.dictionaries(st.text(max_size=3), kids, max_size=3)),
    max_leaves=12)


def _equal(a, b):
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return a == b and type(a) is type(b)


@settings(max_examples=60, deadline=None)
@given(tree=_trees, protocol=st.integers(0, pickle.HIGHEST_PROTOCOL))
def test_safe_unpickler_round_trips_feature_like_data(tree, protocol):
    assert _equal(safe_loads(pickle.dumps(tree, protocol=protocol)), tree)


@settings(max_examples=30, deadline=None)
@given(d=st.sampled_from([16, 32, 64]), heads=st.sampled_from([1, 2, 4]), tau=st.floats(0.1, 10),
       fusion=st.sampled_from(["gaussian", "poe", "concat"]), gate=st.sampled_from(["gate", "sum"]),
       centrals=st.sampled_from([("t",), ("a", "v"), ("t", "a", "v")]))
def test_config_json_round_trip(d, heads, tau, fusion, gate, centrals):
    cfg = CMATHConfig.tiny(d_model=d, num_heads=heads, tau=tau, fusion=fusion, cross_gate=gate, centrals=centrals)
    assert CMATHConfig.from_json(cfg.to_json()) == cfg
