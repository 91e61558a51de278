"""Autotune mode (``CMATH_FAST_AUTOTUNE=1``, kernels/autotune.py): the candidates, the table rows
it prints, the tuned launch path (run on the CPU through the interpreter with one candidate, the
table's own tile: Triton's multi-config benchmarking needs a GPU), and every candidate compiled
ahead of time for sm_90."""

import os
import re

import pytest
import torch

from cmath_fast.kernels import autotune, configs
from cmath_fast.kernels.configs import Tile
from tests.kernels.aot import start_worker
from tests.kernels.aot_cases import autotune_cases

needs_kernels = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or TRITON_INTERPRET=1 (Triton's CPU interpreter)")


def test_candidates_put_the_table_tile_first_without_repeats():
    table = Tile(64, 64, 0, 4, 2)
    c = autotune.candidates("cma_fwd", table)
    assert c[0] == table and c.count(table) == 1
    sigs = [(t.block_m, t.block_n, t.num_warps, t.num_stages) for t in c]
    assert len(sigs) == len(set(sigs)) and len(c) >= 20
    pre = autotune.candidates("cma_bwd_preprocess", Tile(32, 0, 0, 4, 1))
    assert all(t.block_n == 0 for t in pre)


def test_printed_row_is_a_table_row():
    row = autotune.format_row("cma_fwd", (128, 64, "bf16"), Tile(128, 64, 0, 8, 3), "sm90 key (110, 64)")
    m = re.match(r'\("(\w+)", (\d+), (\d+), "(\w+)", Tile\((\d+), (\d+), (\d+), (\d+), (\d+)\)\),  # (.*)', row)
    assert m, row
    name, bucket, bd, dtype = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
    tile = Tile(*(int(m.group(i)) for i in range(5, 10)))
    table = ((name, bucket, bd, dtype, tile),) + configs.ATTENTION
    assert configs._lookup(table, "cma_fwd", 128, 64, "bf16") == Tile(128, 64, 0, 8, 3)


def test_off_by_default_and_under_the_interpreter(monkeypatch):
    monkeypatch.delenv(autotune.ENV, raising=False)
    assert not autotune.enabled()
    monkeypatch.setenv(autotune.ENV, "1")
    monkeypatch.setattr(autotune, "interpreting", lambda: True)
    assert not autotune.enabled()


@needs_kernels
def test_tuned_launch_path_matches_the_table_launch(monkeypatch, tmp_path):
    from cmath_fast.ops import cross_modal_attention_packed

    g = torch.Generator().manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    q = torch.randn(2, 9, 2, 16, generator=g).to(device).requires_grad_(True)
    kv = torch.randn(3, 2, 9, 2, 2, 16, generator=g).to(device).requires_grad_(True)
    gates = torch.rand(2, 9, 3, 2, generator=g).to(device).requires_grad_(True)
    lengths = torch.tensor([9, 4], device=device)

    from cmath_fast.ops import variational_fusion
    from cmath_fast.ops.row_conv import row_conv
    from cmath_fast.packing import pack_rows
    x = torch.randn(10, 20, generator=g).to(device).requires_grad_(True)
    cw = torch.randn(24, 20, 3, generator=g).to(device).requires_grad_(True)
    cb = torch.randn(24, generator=g).to(device).requires_grad_(True)
    layout = pack_rows(torch.tensor([6, 4]), 6).to(device)
    e = torch.randn(7, 32, generator=g).to(device)
    w = torch.randn(24, 32, generator=g).to(device)
    eps = torch.randn(7, 12, generator=g).to(device)

    def run():
        for t in (q, kv, gates):
            t.grad = None
        out = cross_modal_attention_packed(q, kv, lengths, gates=gates)
        out.backward(torch.ones_like(out))
        z, kl = variational_fusion(e, w, None, eps=eps)
        for t in (x, cw, cb):
            t.grad = None
        y = row_conv(x, cw, cb, layout.pos, layout.lens, activation="gelu")
        y.backward(torch.ones_like(y))
        return ([out.detach()] + [t.grad.clone() for t in (q, kv, gates)] + [z, kl, y.detach()]
                + [t.grad.clone() for t in (x, cw, cb)])

    plain = run()
    autotune.reset()
    monkeypatch.setattr(autotune, "enabled", lambda: True)
    if not torch.cuda.is_available():  # one candidate, the table's own: no benchmarking needed
        monkeypatch.setattr(autotune, "CANDIDATES", {k: [] for k in autotune.CANDIDATES})
    out_file = tmp_path / "winners.txt"
    monkeypatch.setenv(autotune.OUT_ENV, str(out_file))
    try:
        tuned = run()
        tuned_again = run()  # the same keys: tuned once, reported once
        winners = autotune.winners()
    finally:
        autotune.reset()
    for a, b in zip(tuned, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(tuned_again, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert sorted(w["kernel"] for w in winners) == sorted(autotune.PARAMS)
    attn = [w for w in winners if w["kernel"].startswith("cma_")]
    assert all(w["row_key"] == (16, 16, "fp32") and w["key"] == (9, 16) for w in attn)
    assert [w["key"] for w in winners if w["kernel"] == "vf_fwd"] == [(32, 12)]
    # (C_in + C_B, C_Y, K): the output width 24 padded to a multiple of 16
    assert all(w["key"] == (20, 32, 3) for w in winners if w["kernel"].startswith("row_conv"))
    lines = out_file.read_text().splitlines()
    assert len(lines) == len(autotune.PARAMS) and all(line.startswith('("') for line in lines)
    assert any("FUSION_BY_FAMILY" in line for line in lines)
    assert any(line.startswith('("bwd_dw", None, None, "fp32", Tile(') for line in lines)


@pytest.fixture(scope="module")
def reports():
    cases = autotune_cases()
    return cases, start_worker("tune-sm90", list(cases)).result()


def test_every_candidate_compiles_for_sm90(reports):
    cases, reps = reports
    errors = {n: r["error"] for n, r in reps.items() if "error" in r}
    assert not errors, errors
    # the 16-bit tiles of 64+ rows and columns use Hopper's wgmma
    for name, (kernel, ptr, const, warps, stages) in cases.items():
        if min(const.get("BLOCK_M", 0), const.get("BLOCK_N", 0)) >= 64:
            assert "wgmma.mma_async" in reps[name]["tensor_cores"], name
