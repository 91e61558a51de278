#!/usr/bin/env bash
# The on-a-GPU issue's session in one device call: the self-test, the quick reproduce run, a
# profile of one graphed training step, and the generated-code report on the device's own Triton.
# The stage timeouts add up to 585 s, within one call's 10 minutes (run it with timeout_s 600).
# Everything lands in OUT/session/ and is packed into OUT/session.tar.gz (a device call returns at
# most 8 files); a short table is printed last.
# Usage: bash bench/device_session.sh [OUT] (default $OUT, else bench/results/session-DATE).
set -uo pipefail
cd "$(dirname "$0")/.."
root=${1:-${OUT:-bench/results/session-$(date +%Y%m%d-%H%M%S)}}
out="$root/session"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if ! $py -c "import cmath_fast.kernels" 2>/dev/null; then
  $py -m pip install -q --no-build-isolation --no-deps -e . >"$out/install.log" 2>&1 || {
    ln -sfn ../kernels cmath_fast/kernels; export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"; }
fi
t0=$(date +%s)
timeout 90 $py -m cmath_fast.cli doctor > "$out/doctor.txt" 2>&1; doctor=$?
timeout 345 bash bench/reproduce.sh quick "$out/quick" > "$out/quick.log" 2>&1; quick=$?
timeout 90 $py bench/profile_step.py --out "$out/profile.json" > "$out/profile.txt" 2>&1; prof=$?
timeout 60 $py -m tests.kernels.aot --report iemocap 90 > "$out/generated-code-sm90.md" 2>&1; aot=$?
tar czf "$root/session.tar.gz" -C "$root" session
echo "== device session: $(( $(date +%s) - t0 )) s =="
printf '%-28s exit %s\n' "cmath-fast doctor" "$doctor" "reproduce.sh quick" "$quick" \
  "profile_step.py" "$prof" "aot --report (device Triton)" "$aot"
tail -n 3 "$out/doctor.txt"
cat "$out/profile.txt" 2>/dev/null | head -n 16
cat "$out/quick/report.md" 2>/dev/null | head -n 40
