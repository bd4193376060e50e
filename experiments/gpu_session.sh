#!/usr/bin/env bash
# One lent GPU session as one command of under 9 minutes (../shared/gpu/README.md), run from the project's root:
#   bash .gpu/on-device.sh bash experiments/gpu_session.sh
# In order:
#   1. the versions, the device and the date (gpu.txt);
#   2. what has never been measured on a GPU: benchmark_loop (the loop against its bare step), benchmark_population
#      --ks=1,8,64, benchmark_train (stn_jax against torch on the same GPU) and the default `make train` config's
#      wall time and steps/s (benchmarks.txt; the default run's results.json and metrics.jsonl in session.tar.xz);
#   3. the rest of SESSION_S on experiments/paper_campaign.py (paper_runs.tar.xz: unpack it into results/paper_runs).
# $OUT receives 4 files: gpu.txt, benchmarks.txt, session.tar.xz (logs, the default run, the campaign's record) and
# paper_runs.tar.xz, well inside the machine's 8 files of 16 MiB. Each step has its own timeout, so one that hangs
# or fails costs its share of the window only. SESSION_S (default 510) is the whole command's budget in seconds;
# CAMPAIGN_ARGS adds flags to the campaign and BENCH=0 skips step 2 (a test of this script on a CPU uses both).
set -u
OUT=${OUT:-/tmp/gpu_session}
SESSION_S=${SESSION_S:-510}
PYTHON=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu_session_work}
CAMPAIGN_ARGS=${CAMPAIGN_ARGS:-}
BENCH=${BENCH:-1}
START=$(date +%s)
mkdir -p "$OUT" "$WORK/logs"
rm -rf "$WORK/default" "$WORK/campaign"
elapsed() { echo $(($(date +%s) - START)); }

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__)"
  git log -1 --format='commit %H %s' 2>/dev/null || true
  date -u
} 2>&1 | tee "$OUT/gpu.txt"

bench() {  # name, timeout in seconds, command...: its output to benchmarks.txt (and the log)
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(elapsed) s into the session)" | tee -a "$OUT/benchmarks.txt"
  timeout "$limit" "$@" > "$WORK/logs/$name.txt" 2> "$WORK/logs/$name.log"
  local status=$?
  grep -v -E "^[IWE][0-9]{4} " "$WORK/logs/$name.txt" | tail -40 | tee -a "$OUT/benchmarks.txt"  # the tables
  [ "$status" -eq 0 ] || grep -E "Error|error" "$WORK/logs/$name.log" | tail -3 | tee -a "$OUT/benchmarks.txt"
  echo "($name: exit $status)" | tee -a "$OUT/benchmarks.txt"
}

if [ "$BENCH" = 1 ]; then
  bench benchmark_loop 90 "$PYTHON" experiments/benchmark_loop.py --steps=300 --repeats=2
  bench benchmark_population 90 "$PYTHON" experiments/benchmark_population.py --ks=1,8,64
  bench benchmark_train 60 "$PYTHON" experiments/benchmark_train.py

  echo "== the default make train config ($(elapsed) s into the session)" | tee -a "$OUT/benchmarks.txt"
  T0=$(date +%s.%N)
  timeout 120 "$PYTHON" -m stn_jax.main --config=configs/default.py --workdir="$WORK/default" \
    > "$WORK/logs/default.log" 2>&1
  STATUS=$?
  T1=$(date +%s.%N)
  "$PYTHON" - "$WORK/default/results.json" "$T0" "$T1" "$STATUS" <<'PY' 2>&1 | tee -a "$OUT/benchmarks.txt"
import json, sys
path, t0, t1, status = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
try:
  r = json.load(open(path))
  print(f"default config: wall {t1 - t0:.1f} s (process start to exit, data distortion and compilation included), "
        f"{r['steps_per_sec']:.0f} steps/s over training time {r['train_time_s']:.1f} s, "
        f"test accuracy {100 * r['test_accuracy']:.2f} %, {r['num_train_steps']} steps (exit {status})")
except Exception as e:  # noqa: BLE001 - the session goes on
  print(f"default config: no results (exit {status}, {e}); wall {t1 - t0:.1f} s")
PY
fi

LEFT=$((SESSION_S - $(elapsed) - 25))  # 25 s for packing
echo "== paper campaign, ${LEFT} s ($(elapsed) s into the session)" | tee -a "$OUT/benchmarks.txt"
if [ "$LEFT" -gt 60 ]; then
  # shellcheck disable=SC2086  # CAMPAIGN_ARGS is a list of flags
  timeout $((LEFT + 15)) "$PYTHON" experiments/paper_campaign.py --budget_s="$LEFT" --out="$WORK/campaign" \
    $CAMPAIGN_ARGS > "$WORK/logs/campaign.txt" 2> "$WORK/logs/campaign.log"
  echo "(campaign: exit $?)" | tee -a "$OUT/benchmarks.txt"
  grep -v -E "^[IWE][0-9]{4} " "$WORK/logs/campaign.txt" | tail -25 | tee -a "$OUT/benchmarks.txt"
  cp "$WORK/campaign/paper_runs.tar.xz" "$OUT/" 2>/dev/null || echo "no campaign archive" | tee -a "$OUT/benchmarks.txt"
else
  echo "no time left for the campaign" | tee -a "$OUT/benchmarks.txt"
fi

mkdir -p "$WORK/pack/default"
for f in results.json metrics.jsonl config.json; do cp "$WORK/default/$f" "$WORK/pack/default/" 2>/dev/null; done
cp "$WORK/default/figures/transform_final.png" "$WORK/pack/default/" 2>/dev/null
cp -r "$WORK/logs" "$WORK/pack/"
cp "$WORK/campaign/campaign.json" "$WORK/pack/" 2>/dev/null
tar -cJf "$OUT/session.tar.xz" -C "$WORK/pack" .
date -u | tee -a "$OUT/gpu.txt"
echo "session: $(elapsed) s; $(ls "$OUT" | tr '\n' ' ')"
