"""What the ahead-of-time tests compile for each architecture, and the background workers that do it.

By default (the README's test command, about 4 CPU-minutes a family):
- sm_90 (H100/H200): every case except the autotune candidates (those are ``test_autotune.py``'s);
- sm_80 (A100) and sm_86 (RTX 30xx, A6000): every tile the launchers choose there, bf16, plus a
  representative fp16 subset;
- sm_89 (RTX 40xx, L40S) and sm_120 (RTX 50xx), which take sm_86's rules (same shared memory, same
  mma.sync), and sm_100 (B200): one sampled tile each, the attention forward's largest.
With ``CMATH_FAST_AOT_FULL=1``: every case (every dtype and flag combination) for every
architecture, and every autotune candidate for sm_90.
"""

from tests.kernels.aot import SHARED_LIMIT, report_worker, start_worker
from tests.kernels.aot_cases import FULL, all_cases, autotune_cases

LAUNCHER_TARGETS = (80, 86)
SAMPLED_TARGETS = (89, 100, 120)


def sampled_case(family: str = "") -> str:
    """The launcher case of the attention forward at head dim 128, longest bucket (the largest tile)."""
    from cmath_fast.kernels.configs import attention_tile_for
    t = attention_tile_for("cma_fwd", 128, 128, "bf16", family)
    return f"launcher-fwd-bf16-{t.block_m}x{t.block_n}-d128-w{t.num_warps}s{t.num_stages}"


def plan():
    """{cc: (case names, names checked for spills)}."""
    from cmath_fast.kernels.configs import family_of
    out = {}
    for cc in sorted(SHARED_LIMIT):
        cases = [n for n in all_cases(family_of(cc // 10, cc % 10)) if not n.startswith("tune-")]
        if FULL or cc == 90:
            names = cases
        elif cc in LAUNCHER_TARGETS:
            names = [n for n in cases if n.startswith("launcher-")]
        else:
            names = [sampled_case(family_of(cc // 10, cc % 10))]
        out[cc] = (names, [n for n in names if n.startswith("launcher-")])
    return out


def start_all():
    """Start every architecture's worker (and the autotune candidates' for sm_90) in the background."""
    for cc, (names, spill) in plan().items():
        start_worker(f"sm{cc}", names, spill, cc)
    start_worker("tune-sm90", list(autotune_cases()), (), 90)
    for preset in ("iemocap", "meld"):  # the generated-code gates (test_generated_code.py)
        for cc in (90, 80):
            report_worker(preset, cc)
