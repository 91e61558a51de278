#!/usr/bin/env bash
# Reproduce the GPU numbers in one command: bash bench/reproduce.sh [quick|full|tune] [OUT_DIR]
#
# quick (at most 330 s of stage timeouts, compiles included, so that with the self-test and a profile
# it fits one device call: bench/device_session.sh): the GPU tests, the first-step
# JIT time per preset, one CMA layer's attention at R1-d1024 by every provider, the iemocap
# training step and inference under bf16 autocast (eager, torch.compile reduce-overhead, ours
# stepped eagerly, ours replayed from CUDA graphs), an iemocap training epoch and evaluation
# pass (eager, ours graphed), and the three U-Nets forward + backward (eager, ours). full: the GPU tests and the whole benchmark suite (no time limit).
# tune: the autotune mode (CMATH_FAST_AUTOTUNE=1) on our attention, fusion and U-Net benchmark rows
# (bf16, fwd+bwd, every shape); the winners, as rows of kernels/configs.py's per-GPU-family
# tables, go to OUT_DIR/autotune-rows.txt and are printed last.
# Writes OUT_DIR/{env.txt, gpu-tests.log, first-step.txt, bench.log, results.csv, report.md} and
# prints the report table last. Works without network: it installs nothing from outside.
set -uo pipefail
mode=${1:-quick}
cd "$(dirname "$0")/.."
out=${2:-bench/results/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CMATH_FAST_BENCH_CSV="$out/results.csv"
py=${PYTHON:-python3}

# The package: installed as it is, or editable without build isolation (offline), or else the
# repo on PYTHONPATH with kernels/ linked where the package expects it.
if ! $py -c "import cmath_fast.kernels" 2>/dev/null; then
  if ! $py -m pip install -q --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1; then
    ln -sfn ../kernels cmath_fast/kernels
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
$py -m cmath_fast.cli env | tee "$out/env.txt"

timeouts=""  # pytest-timeout, where installed, stops one stuck test instead of the whole run
if [ "$mode" = quick ] && $py -c "import pytest_timeout" 2>/dev/null; then timeouts="--timeout 60"; fi
if [ "$mode" = tune ]; then
  export CMATH_FAST_AUTOTUNE=1 CMATH_FAST_AUTOTUNE_OUT="$out/autotune-rows.txt"
  $py -m pytest -q -p no:cacheprovider bench/test_attention.py -k "fwd+bwd and bf16 and triton" \
    2>&1 | tee "$out/bench.log"
  $py -m pytest -q -p no:cacheprovider bench/test_fusion.py -k "variational_fusion and fwd+bwd and bf16 and triton" \
    2>&1 | tee -a "$out/bench.log"
  $py -m pytest -q -p no:cacheprovider bench/test_unet.py -k "triton" 2>&1 | tee -a "$out/bench.log"
  echo "== autotune winners (rows for the *_BY_FAMILY tables of kernels/configs.py) =="
  sort -u "$out/autotune-rows.txt" 2>/dev/null
  exit 0
elif [ "$mode" = quick ]; then
  # stage timeouts: 90 + 30 + 40 + 140 + 30 = 330 s; a stage cut short keeps what it wrote
  timeout 90 $py -m pytest -q -p no:cacheprovider $timeouts tests -m cuda 2>&1 | tee "$out/gpu-tests.log"
  timeout 30 $py bench/first_step.py 2>&1 | tee "$out/first-step.txt"
  timeout 40 $py -m pytest -q -p no:cacheprovider $timeouts bench/test_attention.py \
    -k "R1-d1024 and fwd+bwd and bf16" 2>&1 | tee "$out/bench.log"
  timeout 140 $py -m pytest -q -p no:cacheprovider $timeouts bench/test_model.py bench/test_epoch.py \
    -m quick 2>&1 | tee -a "$out/bench.log"
  timeout 30 $py -m pytest -q -p no:cacheprovider $timeouts bench/test_unet.py -k "unets and not compile" \
    2>&1 | tee -a "$out/bench.log"
else
  $py -m pytest -q -p no:cacheprovider tests -m cuda 2>&1 | tee "$out/gpu-tests.log"
  $py bench/first_step.py 2>&1 | tee "$out/first-step.txt"
  $py -m pytest -q -p no:cacheprovider bench 2>&1 | tee "$out/bench.log"
fi
if [ -s "$out/results.csv" ]; then
  $py -m cmath_fast.cli bench report "$out/results.csv" --out /tmp/cmath-report >/dev/null 2>&1 \
    && cp /tmp/cmath-report/report.md "$out/report.md"
  echo "== results =="
  cat "$out/report.md" 2>/dev/null || cat "$out/results.csv"
fi
