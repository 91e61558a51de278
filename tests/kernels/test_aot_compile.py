"""Every kernel configuration compiles for Hopper (sm_90) without a GPU, fits an H100's shared
memory, uses wgmma for 16-bit tiles of 64 rows or more (mma otherwise), and no tile the launchers
can choose spills registers. The compiles run in one worker process without the interpreter."""

import pytest

from tests.kernels.aot import H100_SMEM, run_worker
from tests.kernels.aot_cases import all_cases

CASES = {n: c for n, c in all_cases().items() if not n.startswith("tune-")}  # see test_autotune.py
SPILL = [n for n in CASES if n.startswith("launcher-")]


@pytest.fixture(scope="module")
def reports():
    return run_worker(list(CASES), SPILL)


def test_every_launcher_tile_is_compiled():
    from cmath_fast.kernels.configs import all_attention_tiles, all_fusion_tiles, all_row_conv_tiles
    compiled = {(c[2].get("BLOCK_M", c[2].get("BLOCK_N")), c[3], c[4]) for n, c in CASES.items()
                if n.startswith("launcher-")}
    for kernel, _, _, dtype, t in list(all_attention_tiles()) + list(all_fusion_tiles()):
        if dtype == "bf16":
            assert (t.block_m, t.num_warps, t.num_stages) in compiled, f"{kernel} {t} is never compiled"
    for kernel, dtype, t in all_row_conv_tiles():
        if dtype == "bf16":
            assert any(n.startswith(f"launcher-rowconv-{kernel}-bf16-{t.block_m}x{t.block_n}x{t.block_k}")
                       for n in CASES), f"row conv {kernel} {t} is never compiled"


@pytest.mark.parametrize("name", list(CASES))
def test_compiles_for_sm90(reports, name):
    rep = reports[name]
    assert "error" not in rep, f"{name}: {rep.get('error')}"
    assert rep["shared"] <= H100_SMEM, f"{name}: {rep['shared']} bytes of shared memory"
    const = CASES[name][2]
    if "BLOCK_N" in const and "BLOCK_M" in const and not const.get("UPCAST", True):
        if min(const["BLOCK_M"], const["BLOCK_N"]) >= 64:
            assert rep["wgmma"], f"{name}: a 16-bit tile of 64+ rows should use wgmma"
        else:
            assert rep["mma"], f"{name}: 16-bit dots should use tensor cores"


@pytest.mark.parametrize("name", SPILL)
def test_launcher_tiles_do_not_spill(reports, name):
    rep = reports[name]
    if rep.get("spills") is None:
        pytest.skip("Triton's bundled ptxas is not in this installation")
    assert rep["spills"] == 0, f"{name}: {rep['spills']} bytes of spills with {rep['regs']} registers"
