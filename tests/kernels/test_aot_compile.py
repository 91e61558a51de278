"""Every kernel configuration compiles for Hopper (sm_90) without a GPU, fits an H100's shared
memory, uses wgmma for 16-bit tiles of 64 rows or more (mma otherwise), and the largest tiles
do not spill registers. The compiles run in one worker process without the interpreter."""

import pytest

from tests.kernels.aot import H100_SMEM, run_worker
from tests.kernels.aot_cases import all_cases

CASES = all_cases()
SPILL = [n for n in CASES if n.startswith("largest-")]


@pytest.fixture(scope="module")
def reports():
    return run_worker(list(CASES), SPILL)


def test_launcher_largest_tiles_are_the_launchers_configs():
    from cmath_fast.kernels import cross_modal_attention as cma
    configs = cma.launcher_configs()
    for name in SPILL:
        if "fusion" in name:
            continue
        _, _, const, warps, stages = CASES[name]
        kind = "fwd" if "-fwd-" in name else "bwd"
        key = (kind, const["BLOCK_M"], const["BLOCK_N"], warps, stages, const["BLOCK_D"])
        assert key in configs, f"{name}: {key} is not a config the launchers choose"


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
def test_largest_tiles_do_not_spill(reports, name):
    rep = reports[name]
    if rep.get("spills") is None:
        pytest.skip("Triton's bundled ptxas is not in this installation")
    assert rep["spills"] == 0, f"{name}: {rep['spills']} bytes of spills with {rep['regs']} registers"
