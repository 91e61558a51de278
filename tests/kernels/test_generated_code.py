"""Gates on the code the GPU runs: one bf16-mixed training step of the fused model at each preset's
sizes, its launches recorded without a GPU (``runtime_specs``) and compiled for sm_90 and sm_80 as
Triton's runtime compiles them (16-byte aligned pointers, the model's widths specialised, the
batch's row counts and strides not). Per kernel: no spills; every dot on tensor cores; a pipelined
loop's operands staged in shared memory; and no scalar 16-bit global load or store except on the
side inputs listed below with the reason — each scalar access is traced to its source line through
the PTX's line records, so vectorising one operand cannot hide another that went scalar
(``python -m tests.kernels.aot --report`` prints the whole table)."""

import pytest

from tests.kernels.aot import report_worker

# The only scalar 16-bit accesses allowed, per kernel: a fragment of the source line, and why.
SIDE_INPUTS = {
    "row_conv_fwd": {
        "tl.load(BIAS + offs_n": "the bias: one row per program, outside the loop; 1582 and 342 (the last "
                                 "layer's widths) have no 16-byte runs",
    },
    "cma_fwd": {"tl.load(G + ": "the gates: one value per (row, stream, head)"},
    "cma_bwd_preprocess": {"tl.load(G + ": "the gates: one value per (row, stream, head)"},
    "vf_bwd": {"tl.load(DKL + rows": "the KL gradient: one value per row"},
    **{k: {"tl.load(Z + idx": "class logits: 6 (IEMOCAP) or 7 (MELD) per row, no 16-byte run",
           "tl.load(F + c * N * K + idx": "class logits, as above",
           "tl.store(DF + c * N * K + idx": "class-logit gradients, as above",
           "tl.store(DZ + idx": "class-logit gradients, as above"} for k in ("loss_rows", "loss_bwd")},
}


def _operand_bytes(r):
    """Bytes of the 16-bit operand tiles one iteration of a kernel's pipelined loop loads, or None
    for a kernel without such a loop (``r``: a report row with its constexprs)."""
    c = r["constexprs"]
    m, n, k, d = c.get("BLOCK_M"), c.get("BLOCK_N"), c.get("BLOCK_K"), c.get("BLOCK_D")
    act = 1 if c.get("ACT") else 0
    tiles = {
        "row_conv_fwd": lambda: m * k + k * n,  # x (or, in its own loop, xb), weight
        "row_conv_bwd_dx": lambda: m * k * (1 + act) + k * n,  # dy (and pre), weight
        "row_conv_bwd_dw": lambda: m * n * (1 + act) + m * k * (2 if c.get("HAS_XB") else 1),  # dy, pre, x, xb
        "cma_fwd": lambda: 2 * n * d,  # k, v
        "cma_bwd_dkdv": lambda: 2 * m * d,  # q, dO
        "cma_bwd_dq": lambda: 2 * n * d,  # k, v
        "vf_fwd": lambda: c["BLOCK_N"] * k + 2 * k * c["BLOCK_Z"],  # e, W_mu, W_lv
    }
    return 2 * tiles[r["kernel"]]() if r["kernel"] in tiles else None


@pytest.fixture(scope="module", params=[("iemocap", 90), ("iemocap", 80), ("meld", 90), ("meld", 80)],
                ids=["iemocap-sm90", "iemocap-sm80", "meld-sm90", "meld-sm80"])
def report(request):
    preset, cc = request.param
    return cc, report_worker(preset, cc).result()


def test_every_kernel_family_is_launched_and_compiled(report):
    cc, rows = report
    families = {r["kernel"].split("_")[0] for r in rows}
    assert families >= {"standardise", "row", "rec", "ln", "cma", "vf", "loss"}, families


def test_every_pointer_is_16_byte_aligned(report):
    """The gates assume the runtime sees 16-byte aligned pointers (tied-stack slices, packed rows'
    views and the launchers' own buffers included) at the preset's real sizes."""
    cc, rows = report
    unaligned = [(r["kernel"], r["unaligned"]) for r in rows if r["unaligned"]]
    assert not unaligned, unaligned


def test_no_spills(report):
    cc, rows = report
    spilled = [(r["kernel"], r["tile"], r["spills"]) for r in rows if r["spills"]]
    assert not spilled, f"sm_{cc}: {spilled}"


def test_dots_on_tensor_cores(report):
    cc, rows = report
    for r in rows:
        if _operand_bytes(r) is not None:
            assert r["tensor_cores"] > 0, f"sm_{cc} {r['kernel']} {r['tile']}: no tensor-core instruction"


def test_pipelined_loops_stage_their_operands_in_shared_memory(report):
    """Where num_stages > 1, shared memory holds at least (stages - 1) iterations' operand tiles:
    the loads run ahead of the dots (with none, num_stages does nothing)."""
    cc, rows = report
    for r in rows:
        need = _operand_bytes(r)
        if need is not None and r["stages"] > 1:
            assert r["shared"] >= (r["stages"] - 1) * need, \
                f"sm_{cc} {r['kernel']} {r['tile']}: {r['shared']} B shared, {r['stages']} stages of {need} B"
            assert r["cp_async"] + r["tma"] > 0, f"sm_{cc} {r['kernel']} {r['tile']}: no asynchronous copy"


def test_no_scalar_16_bit_access_on_a_main_operand(report):
    cc, rows = report
    bad = []
    for r in rows:
        allowed = SIDE_INPUTS.get(r["kernel"], {})
        for site in r["scalar_sites"]:
            if not any(fragment in site["source"] for fragment in allowed):
                bad.append(f"{r['kernel']} ({r['tile']}): {site['count']} {site['op']} at {site['file']}:"
                           f"{site['line']} `{site['source']}`")
    assert not bad, f"sm_{cc}:\n" + "\n".join(bad)


def test_every_kernel_reads_or_writes_16_bytes_at_a_time(report):
    """Each kernel that streams a 16-bit tile moves it by vector or asynchronous copies."""
    cc, rows = report
    for r in rows:
        if r["kernel"] in ("rec_total", "loss_total"):  # fp32 partial sums only
            continue
        assert r["ld_vec"] + r["st_vec"] + r["cp_async"] + r["tma"] > 0, f"sm_{cc} {r['kernel']}: all scalar"
