"""Every kernel configuration compiles without a GPU for each architecture researchers train on
(``aot_plan``: sm_80, sm_86, sm_89, sm_90, sm_100, sm_120), fits that architecture's per-block
shared memory, runs its 16-bit dots on tensor cores (mma.sync; wgmma for Hopper tiles of 64+
rows; tcgen05 or mma on Blackwell), and no tile the launchers choose there spills registers
(ptxas for that architecture). One worker process per architecture, started in the background
when the tests are collected."""

import pytest

from cmath_fast.kernels.configs import family_of
from tests.kernels.aot import SHARED_LIMIT, has_16bit_dots, start_worker
from tests.kernels.aot_cases import all_cases
from tests.kernels.aot_plan import plan

PLAN = plan()
CASES = {cc: all_cases(family_of(cc // 10, cc % 10)) for cc in PLAN}
PARAMS = [pytest.param(cc, name, id=f"sm{cc}-{name}") for cc, (names, _) in PLAN.items() for name in names]
SPILL = [pytest.param(cc, name, id=f"sm{cc}-{name}") for cc, (_, spill) in PLAN.items() for name in spill]
# The tensor-core instructions a 16-bit dot may compile to, per architecture.
TENSOR_CORES = {80: {"mma.sync"}, 86: {"mma.sync"}, 89: {"mma.sync"}, 90: {"mma.sync", "wgmma.mma_async"},
                100: {"mma.sync", "tcgen05.mma"}, 120: {"mma.sync"}}


def _reports(cc):
    names, spill = PLAN[cc]
    return start_worker(f"sm{cc}", names, spill, cc).result()


def test_every_launcher_tile_is_compiled_for_every_family_with_rules():
    from cmath_fast.kernels.configs import (FAMILY_SHARED_MEMORY, all_attention_tiles, all_fusion_tiles,
                                            all_row_conv_tiles)
    covered = {family_of(cc // 10, cc % 10) for cc in (80, 86, 90)}
    assert covered >= set(FAMILY_SHARED_MEMORY) - {"sm100"}, "a family with rules lacks its launcher cases"
    for cc in (80, 86, 90):
        family = family_of(cc // 10, cc % 10)
        cases = CASES[cc]
        compiled = {(c[2].get("BLOCK_M", c[2].get("BLOCK_N")), c[3], c[4]) for n, c in cases.items()
                    if n.startswith("launcher-") and n in PLAN[cc][0]}
        for kernel, _, _, dtype, t in list(all_attention_tiles(family)) + list(all_fusion_tiles(family)):
            if dtype == "bf16":
                assert (t.block_m, t.num_warps, t.num_stages) in compiled, f"sm{cc}: {kernel} {t} is never compiled"
        for kernel, dtype, t in all_row_conv_tiles(family):
            if dtype == "bf16":
                assert any(n.startswith(f"launcher-rowconv-{kernel}-bf16-{t.block_m}x{t.block_n}x{t.block_k}")
                           for n in PLAN[cc][0]), f"sm{cc}: row conv {kernel} {t} is never compiled"


def test_the_shared_memory_limits_are_the_families():
    from cmath_fast.kernels.configs import FAMILY_SHARED_MEMORY
    for cc, limit in SHARED_LIMIT.items():
        assert FAMILY_SHARED_MEMORY[family_of(cc // 10, cc % 10)] == limit, cc


def test_tensor_core_instructions_are_matched_as_instructions():
    from tests.kernels.aot import TENSOR_CORE
    ptx = "\n".join(["\t// mma.sync in a comment", "\t.reg .b32 %mma_sync;", "\tmov.u32 %r1, %r2;",
                     "\t@%p3 tcgen05.mma.cta_group::1.kind::f16 [%r1], %rd2;", "\tmma.sync.aligned.m16n8k16.row"])
    assert TENSOR_CORE.findall(ptx) == ["tcgen05.mma", "mma.sync"]


@pytest.mark.parametrize("cc, name", PARAMS)
def test_compiles_and_fits(cc, name):
    rep = _reports(cc)[name]
    assert "error" not in rep, f"sm_{cc} {name}: {rep.get('error')}"
    assert rep["shared"] <= SHARED_LIMIT[cc], \
        f"sm_{cc} {name}: {rep['shared']} bytes of shared memory, the limit is {SHARED_LIMIT[cc]}"
    const = CASES[cc][name][2]
    if has_16bit_dots(const):
        found = set(rep["tensor_cores"])
        assert found & TENSOR_CORES[cc], f"sm_{cc} {name}: 16-bit dots without tensor-core instructions ({found})"
        if cc == 90 and min(const["BLOCK_M"], const["BLOCK_N"]) >= 64:
            assert "wgmma.mma_async" in found, f"{name}: a 16-bit tile of 64+ rows should use wgmma on sm_90"


@pytest.mark.parametrize("cc, name", SPILL)
def test_launcher_tiles_do_not_spill(cc, name):
    rep = _reports(cc)[name]
    assert "error" not in rep, f"sm_{cc} {name}: {rep.get('error')}"
    if rep.get("spills") is None:
        pytest.skip("Triton's bundled ptxas is not in this installation")
    assert rep["spills"] == 0, f"sm_{cc} {name}: {rep['spills']} bytes of spills with {rep['regs']} registers"
