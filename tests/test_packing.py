"""Packed rows (``cmath_fast.packing``): the layout, the attention op on packed rows against the
padded layout, and the fused model computed on packed rows against the padded fused model and the
reference — with and without padding rows (the static row counts of CUDA graphs)."""

import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

from cmath_fast import CMATH, CMATHConfig
from cmath_fast.data.dataset import Batch
from cmath_fast.graphs import GraphedTrainer
from cmath_fast.model import PackedCMATHOutput
from cmath_fast.ops import cross_modal_attention_packed
from cmath_fast.packing import MAX_COPIES, pack_rows, row_bucket
from cmath_fast.step import train_step
from tests.helpers import assert_close, make_batch

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=5), st.integers(0, 40), st.data())
def test_layout(lengths, extra, data):
    L = max(max(lengths), 1) + data.draw(st.integers(0, 3))
    B = len(lengths)
    total = sum(lengths)
    n = min(max(total, 1) + extra, B * L)
    r = pack_rows(torch.tensor(lengths), L, rows=n)
    assert (r.batch, r.max_len, r.n_rows) == (B, L, n)
    starts = r.starts_for(1).tolist()
    assert starts[0] == 0 and starts[-1] == n
    ext = [starts[b + 1] - starts[b] for b in range(B)]
    assert all(lengths[b] <= ext[b] <= L for b in range(B))  # extents hold the dialogue, within L
    assert int(r.valid.sum()) == total
    for b in range(B):
        rows = range(starts[b], starts[b + 1])
        assert r.pos[list(rows)].tolist() == list(range(ext[b]))
        assert set(r.lens[list(rows)].tolist()) <= {lengths[b]}
        assert r.index[list(rows)].tolist() == [b * L + i for i in range(ext[b])]
        assert r.valid[list(rows)].tolist() == [i < lengths[b] for i in range(ext[b])]
    # unpack inverts pack on every position inside an extent
    inside = torch.zeros(B * L, dtype=torch.bool)
    inside[r.index] = True
    assert torch.equal(r.index[r.unpack[inside]], torch.arange(B * L)[inside])
    # stacked copies: each copy's dialogues start N rows after the previous copy's
    s3 = r.starts_for(MAX_COPIES).tolist()
    assert s3[-1] == MAX_COPIES * n
    assert s3[B:2 * B] == [s + n for s in starts[:-1]]


def test_layout_errors():
    with pytest.raises(ValueError, match="rows must lie"):
        pack_rows(torch.tensor([3, 2]), 4, rows=4)
    with pytest.raises(ValueError, match="rows must lie"):
        pack_rows(torch.tensor([3, 2]), 4, rows=9)
    with pytest.raises(ValueError, match="lengths must lie"):
        pack_rows(torch.tensor([5, 2]), 4)
    with pytest.raises(ValueError, match="copies"):
        pack_rows(torch.tensor([3, 2]), 4).starts_for(MAX_COPIES + 1)


def test_row_bucket():
    assert [row_bucket(n, 10_000) for n in (1, 32, 33, 256, 257, 780, 3000)] == [32, 32, 64, 256, 288, 832, 3072]
    for n in range(1, 5000, 7):
        assert n <= row_bucket(n, 10_000) < n + max(32, n / 8)  # a multiple of 32 or 1/16 of the next power of 2
    assert row_bucket(100, 90) == 90  # never more rows than B * L


@needs_kernels
@pytest.mark.parametrize("gates, dropout, joint", [(True, 0.3, False), (False, 0.0, True), (True, 0.0, True)])
@pytest.mark.parametrize("n_rows", [None, 19])
def test_attention_packed_equals_padded(gates, dropout, joint, n_rows):
    """Same outputs and gradients as the padded layout at every valid row; the dropout masks
    agree (the Philox counters are the padded layout's); rows past a dialogue's length are zero."""
    g = torch.Generator().manual_seed(0)
    S, B, L, H, dh = 3, 3, 7, 2, 16
    lengths = torch.tensor([5, 0, 7])
    q = torch.randn(B, L, H, dh, generator=g).to(DEVICE)
    kv = torch.randn(S, B, L, 2, H, dh, generator=g).to(DEVICE)
    gt = torch.rand(B, L, S, H, generator=g).to(DEVICE) if gates else None
    rows = pack_rows(lengths, L, rows=n_rows).to(DEVICE)
    dout = torch.randn(B, L, S, H, dh, generator=g).to(DEVICE)
    valid = rows.valid

    def run(packed):
        qq, kk = q.clone(), kv.clone()
        gg = gt.clone() if gates else None
        for t in (qq, kk, gg):
            if t is not None:
                t.requires_grad_(True)
        torch.manual_seed(7)  # the same dropout seed for both layouts
        if packed:
            pk = lambda t, axis=0: t.flatten(axis, axis + 1).index_select(axis, rows.index)
            out = cross_modal_attention_packed(pk(qq), pk(kk, 1), lengths.to(DEVICE), gates=pk(gg) if gates else None,
                                               dropout_p=dropout, joint=joint, rows=rows.stacked(1))
            out.backward(pk(dout))
            grads = [t.grad for t in (qq, kk, gg) if t is not None]
            return out, grads
        out = cross_modal_attention_packed(qq, kk, lengths.to(DEVICE), gates=gg, dropout_p=dropout, joint=joint)
        out.backward(dout)
        return out.flatten(0, 1).index_select(0, rows.index), [t.grad for t in (qq, kk, gg) if t is not None]

    out_p, grads_p = run(True)
    out_d, grads_d = run(False)
    assert_close(out_p[valid], out_d[valid], atol=1e-5, name="out")
    assert torch.count_nonzero(out_p[~valid]) == 0
    for name, a, b in zip(("dq", "dkv", "dgates"), grads_p, grads_d):
        if name == "dkv":
            a, b = a.flatten(1, 2)[:, rows.index][:, valid], b.flatten(1, 2)[:, rows.index][:, valid]
        else:
            a, b = a.flatten(0, 1)[rows.index][valid], b.flatten(0, 1)[rows.index][valid]
        assert_close(a, b, atol=1e-5, name=name)


def _models(cfg):
    torch.manual_seed(0)
    ref = CMATH(cfg, backend="torch")
    packed = CMATH(cfg, backend="triton")
    padded = CMATH(cfg, backend="triton", pack_rows=False)
    for m in (packed, padded):
        m.load_state_dict(ref.state_dict())
    return ref, packed, padded


def _step(model, batch, eps, rows=None):
    model.zero_grad(set_to_none=True)
    out = model(*batch[:5], eps=eps, **({} if rows is None else {"rows": rows}))
    total, terms = model.loss(out, batch[5], epoch=3)
    total.backward()
    return out, terms, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@needs_kernels
@pytest.mark.parametrize("overrides", [
    pytest.param({}, id="default"),
    pytest.param({"cross_gate": "sum", "aux_self_attention": True, "num_layers": 2}, id="sum-aux-2layers"),
    pytest.param({"fusion": "poe", "centrals": ("a", "v"), "class_weights": [1, 2, 0.5, 3]}, id="poe-weighted"),
])
@pytest.mark.parametrize("extra_rows", [0, 6])
def test_packed_model_equals_padded_and_reference(overrides, extra_rows):
    cfg = CMATHConfig.tiny(dropout=0.0, **overrides)
    ref, packed, padded = _models(cfg)
    batch = make_batch(cfg, [4, 9, 1, 6], max_len=10)
    lengths = batch[4]
    eps = torch.randn(4, 10, cfg.d_z, generator=torch.Generator().manual_seed(3))
    rows = pack_rows(lengths, 10, rows=int(lengths.sum()) + extra_rows)
    for m in (ref, packed, padded):
        m.train()  # the fusion draws noise in training: eps given, the same for all
    out_r, terms_r, grads_r = _step(ref, batch, eps)
    out_p, terms_p, grads_p = _step(packed, batch, eps, rows)
    out_d, terms_d, grads_d = _step(padded, batch, eps)
    assert isinstance(out_p, PackedCMATHOutput) and not isinstance(out_d, PackedCMATHOutput)
    assert out_p.packed.logits.shape[1] == rows.n_rows
    mask = out_r.mask
    for name, got in (("packed", out_p), ("padded", out_d)):
        assert_close(got.logits, out_r.logits, atol=2e-5, name=f"{name} logits")
        for c in cfg.centrals:
            assert_close(got.fine_logits[c], out_r.fine_logits[c], atol=2e-5, name=f"{name} fine logits {c}")
            assert_close(got.fine[c][mask], out_r.fine[c][mask], atol=2e-5, name=f"{name} fine {c}")
        assert_close(got.coarse[mask], out_r.coarse[mask], atol=2e-5, name=f"{name} coarse")
        assert_close(got.kl, out_r.kl, atol=2e-5, name=f"{name} kl")
    for k in terms_r:
        assert_close(terms_p[k], terms_r[k], atol=2e-5, name=f"term {k}")
    assert set(grads_p) == set(grads_r) == set(grads_d)
    for k in grads_r:
        assert_close(grads_p[k], grads_r[k], atol=5e-5, rtol=1e-4, name=f"grad {k}")


@needs_kernels
def test_packed_training_with_dropout_is_finite_and_seeded():
    """With every dropout on, packed rows train (finite, padding rows inert) and reproduce from the
    seed."""
    cfg = CMATHConfig.tiny(dropout=0.3, attn_dropout=0.2)
    _, packed, _ = _models(cfg)
    packed.train()
    batch = make_batch(cfg, [3, 8, 5], max_len=8)
    rows = pack_rows(batch[4], 8, rows=20)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        out, terms, grads = _step(packed, batch, None, rows)
        runs.append((terms["total"], grads))
        assert torch.isfinite(terms["total"]) and all(torch.isfinite(g).all() for g in grads.values())
        assert torch.count_nonzero(out.logits[~out.mask]) == 0
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


@needs_kernels
def test_graphed_trainer_buckets_packed_rows():
    """Without capture, the graphed trainer's code path packs each batch in a bucketed row count
    and takes the step that the eager packed step takes on the same padded batch."""
    cfg = CMATHConfig.tiny(dropout=0.0)
    _, a, _ = _models(cfg)
    _, b, _ = _models(cfg)
    host = Batch(*make_batch(cfg, [5, 2, 7], seed=1), ids=[0, 1, 2])
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3)
    trainer = GraphedTrainer(a, opt_a, batch_size=4, capture=False)
    padded = trainer._padded(host)
    assert padded.rows is not None
    B, L = padded.shape
    assert padded.rows.n_rows == row_bucket(int(host.lengths.sum()), B * L)
    torch.manual_seed(0)
    total_a, _ = trainer.step(host, epoch=2)
    torch.manual_seed(0)
    eager = host.padded(B, L).with_rows(padded.rows.n_rows)
    total_b, _ = train_step(b, opt_b, eager.inputs(), eager.labels, 2, rows=eager.rows)
    assert_close(total_a, total_b, atol=1e-5, name="loss")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert_close(p, q, atol=1e-5, name=n)


@needs_kernels
def test_a_layout_for_another_batch_is_refused():
    cfg = CMATHConfig.tiny()
    _, packed, _ = _models(cfg)
    batch = make_batch(cfg, [4, 2], max_len=5)
    with pytest.raises(ValueError, match=r"rows: a layout of \(B, L\) = \(2, 6\)"):
        packed(*batch[:5], rows=pack_rows(batch[4], 6))
    wrong = pack_rows(batch[4], 5)
    wrong = type(wrong)(*(t.to("meta") for t in wrong.tensors()), batch=2, max_len=5, n_rows=wrong.n_rows)
    with pytest.raises(ValueError, match="rows: on meta"):
        packed(*batch[:5], rows=wrong)
