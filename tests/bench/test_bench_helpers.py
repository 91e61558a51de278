"""The benchmark suite's own helpers, on CPU: shapes, FLOP formula, CSV schema, report,
providers' correctness checks, the device-op counter and the profile command."""

import math
import os

import pytest
import torch

from cmath_fast.bench import results
from cmath_fast.bench.report import markdown_table, plots
from cmath_fast.bench.shapes import (ATTENTION_SHAPES, MODEL_SHAPES, AttentionShape, attention_flops)

interp = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
                            reason="the fused provider needs CUDA or TRITON_INTERPRET=1")


def test_shapes_are_the_design_shapes():
    want = {f"{t}-d{d}" for t in ("R1", "R2") for d in (256, 512, 1024)} | {"S1-d512", "S1-d1024", "S2-d1024"}
    assert set(ATTENTION_SHAPES) == want
    assert set(MODEL_SHAPES) == {"iemocap-d256", "iemocap-d1024", "meld-d256", "meld-d1024"}
    r1, r2 = ATTENTION_SHAPES["R1-d1024"], ATTENTION_SHAPES["R2-d1024"]
    assert (r1.batch, r1.max_len, r1.heads, r1.head_dim) == (16, 110, 8, 128)
    assert (r2.batch, r2.max_len, sum(r2.lengths)) == (64, 33, 618)
    assert ATTENTION_SHAPES["S1-d512"].head_dim == 64 and ATTENTION_SHAPES["S2-d1024"].max_len == 8192


def test_flop_formula():
    s = AttentionShape("t", (3, 2), d=8, heads=2, centrals=1, streams=2)
    fwd = 4 * 8 * (9 + 4) * 2
    assert attention_flops(s, "fwd") == fwd
    assert attention_flops(s, "bwd") == 2.5 * fwd and attention_flops(s, "fwd+bwd") == 3.5 * fwd


def _row(provider, us, shape="R1-d1024"):
    return dict(op="cross_modal_attention", shape=shape, mode="fwd", dtype="bf16", provider=provider,
                median_us=us, p20_us=us * 0.9, p80_us=us * 1.1, tflops=1.5, gbps=100.0, peak_mb=3.0)


def test_csv_round_trip_and_schema(tmp_path):
    path = tmp_path / "r.csv"
    results.append_row(str(path), _row("eager", 100.0))
    results.append_row(str(path), _row("triton", 20.0))
    assert path.read_text().splitlines()[0] == ",".join(results.HEADER)
    rows = results.read_rows(str(path))
    assert [r["provider"] for r in rows] == ["eager", "triton"] and rows[1]["median_us"] == 20.0
    with pytest.raises(ValueError, match="unknown fields"):
        results.append_row(str(path), dict(_row("x", 1.0), speed=3))
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not the benchmark schema"):
        results.read_rows(str(bad))


def test_report_table_and_plots(tmp_path):
    rows = [_row("eager", 100.0), _row("triton", 20.0), _row("eager", 50.0, "R2-d1024")]
    for r in rows:
        r.update(gpu="Test GPU", torch="2.x", triton="3.x", date="2026-01-01")
    md = markdown_table(rows)
    line = next(li for li in md.splitlines() if "R1-d1024" in li)
    assert "| 100.0 | 20.0 | — | 5.00 |" in line  # eager, triton, floor (unknown GPU), speed-up
    assert "—" in next(li for li in md.splitlines() if "R2-d1024" in li)
    written = plots(rows, str(tmp_path))
    assert written and all(os.path.getsize(p) > 0 for p in written)


TINY = AttentionShape("tiny", (5, 3), d=32, heads=2)


@pytest.mark.parametrize("provider", ["eager", "sdpa", pytest.param("triton", marks=interp),
                                      pytest.param("triton_rows", marks=interp)])
def test_attention_providers_agree_on_cpu(provider):
    from cmath_fast.bench.providers import attention_inputs, attention_leaves, attention_provider, check_attention
    from cmath_fast.bench.timing import mode_callable
    inp = attention_inputs(TINY, torch.float32, device="cpu")
    fn = attention_provider(provider, inp)
    check_attention(fn, inp, 1e-4, 1e-4)
    grads = mode_callable(fn, attention_leaves(fn, inp), "fwd+bwd")()
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_wrong_provider_fails_the_check():
    from cmath_fast.bench.providers import attention_inputs, attention_provider, check_attention
    inp = attention_inputs(TINY, torch.float32, device="cpu")
    good = attention_provider("eager", inp)
    with pytest.raises(AssertionError, match="wrong result"):
        check_attention(lambda: good() * 1.1, inp, 1e-4, 1e-4)


@pytest.mark.parametrize("op", ["variational_fusion", "poe_fusion"])
@pytest.mark.parametrize("provider", ["eager", pytest.param("triton", marks=interp)])
def test_fusion_providers_on_cpu(op, provider):
    from cmath_fast.bench.providers import fusion_inputs, fusion_provider
    x = fusion_inputs(7, 16, torch.float32, device="cpu")
    z, kl = fusion_provider(op, provider, x)()
    zr, klr = fusion_provider(op, "eager", x)()
    torch.testing.assert_close(z, zr, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kl, klr, atol=1e-3, rtol=1e-4)


@interp
def test_op_counter_fused_at_most_half_of_reference():
    from cmath_fast.bench.count_ops import count_training_step
    from cmath_fast.config import CMATHConfig
    ref, ref_parts, _ = count_training_step(CMATHConfig.tiny(), "torch")
    fused, fused_parts, ops = count_training_step(CMATHConfig.tiny(), "triton")
    # The CMA stack, the fusion, the embeddings and the backward: at most half the reference's
    # launches; the U-Net (row kernels) and the loss (two kernels) fewer.
    assert fused <= 0.47 * ref, (ref, fused)
    for part in ("cma/tav", "fusion", "backward", "embed"):
        assert fused_parts[part] <= ref_parts[part] / 2, (part, ref_parts[part], fused_parts[part])
    for part in ("loss", "reconstruction"):
        assert fused_parts[part] < ref_parts[part], (part, ref_parts[part], fused_parts[part])
    # the whole loss in two kernels; each U-Net layer one launch for the three modalities
    assert ops["triton::_loss_rows_kernel"] == 1 and ops["triton::_row_conv_fwd_kernel"] == 4
    assert fused <= 150, f"{fused} launches per training step: the whole-step target is at most 150"
    assert any(k.startswith("triton::_cma_fwd") for k in ops), "Triton launches are counted"
    assert ops["triton::_cma_fwd_kernel"] == 1, "one attention launch per layer for all 9 attentions"


def test_counter_excludes_views():
    from cmath_fast.bench.count_ops import OpCounter
    x = torch.randn(4, 6)
    with OpCounter() as c:
        y = x.view(2, 12).unsqueeze(0).squeeze(0).t()[1:]
        y = y + 1
        z = x.t().reshape(3, 8)  # a reshape that must copy is real work
    assert dict(c.ops) == {"aten.add.Tensor": 1, "aten.clone.default": 1}, dict(c.ops)
    assert y.shape == (11, 2) and z.shape == (3, 8)


def test_profile_command_runs_on_cpu(capsys):
    from cmath_fast.cli import main
    assert main(["profile", "--device", "cpu", "--steps", "1", "--warmup", "1", "--backend", "torch"]) == 0
    out = capsys.readouterr().out
    assert "Self CPU" in out and "profiling 1 step(s)" in out


def test_nvtx_ranges_are_free_when_disabled():
    from cmath_fast import profiling
    assert not profiling.enabled() or os.environ.get("CMATH_FAST_NVTX") == "1"
    if not profiling.enabled():
        assert profiling.nvtx_range("x") is profiling.nvtx_range("y"), "a shared null context"
    seen = []
    profiling.add_listener(lambda name, entering: seen.append((name, entering)))
    try:
        with profiling.nvtx_range("fusion"):
            pass
    finally:
        profiling._LISTENERS.clear()
    assert seen == [("cmath/fusion/fwd", True), ("cmath/fusion/fwd", False)]


def test_long_reference_path_matches_eager():
    """The dialogue-by-dialogue SDPA reference used for long shapes equals the eager one."""
    from cmath_fast.bench import providers
    from cmath_fast.reference import cross_modal_attention_ref
    shape = AttentionShape("long", (1030, 7), d=32, heads=2, centrals=1, streams=2)
    inp = providers.attention_inputs(shape, torch.float32, device="cpu", requires_grad=False)
    long_ref = providers.reference_attention(inp)
    eager = cross_modal_attention_ref(inp.q, inp.ks(), inp.vs(), inp.lengths, [inp.lengths] * 2, gates=inp.gates)
    torch.testing.assert_close(long_ref, eager, atol=1e-5, rtol=1e-5)


def test_floor_of_a_row_and_of_the_model_step():
    from cmath_fast.bench.roofline import floor_us, model_step_work, peaks
    assert peaks("NVIDIA H200") == (790e12, 4.3e12) and peaks("Tesla T4") is None
    # compute-bound: 790 GFLOP at 790 TFLOP/s is 1000 µs; bandwidth-bound: 4.3 GB at 4.3 TB/s too
    assert floor_us("NVIDIA H200", flops=790e9, nbytes=1e3) == pytest.approx(1000.0)
    assert floor_us("NVIDIA H200", flops=1.0, nbytes=4.3e9) == pytest.approx(1000.0)
    assert floor_us("NVIDIA H200", flops=790e9, serial_bytes=4.3e9) == pytest.approx(2000.0)
    assert math.isnan(floor_us("Tesla T4", flops=1e12))
    # the baseline's estimate: 131 M parameters, 780 utterances -> 0.61 TFLOP and ~2.1 GB of Adam
    flops, nbytes, serial = model_step_work(131_000_000, [780], train=True)
    assert flops == pytest.approx(0.613e12, rel=1e-2) and serial == pytest.approx(2.1e9, rel=1e-2)
    assert model_step_work(131_000_000, [780], train=False)[2] == 0.0


def test_report_shows_the_floor_and_the_speedup_over_the_best_compile(tmp_path):
    from cmath_fast.bench.report import markdown_table
    from cmath_fast.bench.results import append_row, read_rows
    path = tmp_path / "r.csv"
    for provider, us in (("eager", 400.0), ("compile", 200.0), ("compile_ro", 100.0), ("triton", 50.0)):
        append_row(str(path), dict(op="cmath_train_step", shape="s", mode="fwd+bwd", dtype="bf16",
                                   provider=provider, median_us=us, p20_us=us, p80_us=us, tflops=1.0,
                                   gbps=1.0, peak_mb=1.0, floor_us=10.0))
    table = markdown_table(read_rows(str(path)))
    header, _, row = table.splitlines()[:3]
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in row.split("|")]))
    assert cells["floor µs"] == "10.0" and cells["triton ×eager"] == "8.00"
    assert cells["triton ×best compile"] == "2.00" and cells["triton ÷floor"] == "5.0"
