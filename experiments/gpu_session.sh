#!/usr/bin/env bash
# The measurements of one lent GPU session, as one command (../shared/gpu/README.md), run from the project's root:
#   bash .gpu/on-device.sh bash experiments/gpu_session.sh
# Everything lands under $OUT: the sampler benchmark against torch on the same GPU (2-D and volume cases), then the
# paper's recipe (configs/paper_*.py:paper, one seed each) for RTS CNN, RTS ST-CNN-Aff and TC ST-CNN-Aff, trained side
# by side for TRAIN_S seconds: their metrics.jsonl (every 5,000 steps) and config.json. The 2026-11-26 session
# (docs/h100_2026-11-26) ran this with TRAIN_S=390, then, its first version having returned too many files, the two
# ST-CNN runs again for 350 s.
set -u
OUT=${OUT:-/tmp/gpu_session}
TRAIN_S=${TRAIN_S:-390}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"

echo "== benchmark_sampler"
timeout 100 "$PYTHON" experiments/benchmark_sampler.py --json="$OUT/benchmark_sampler.json" > "$OUT/benchmark_sampler.txt" 2>&1
tail -25 "$OUT/benchmark_sampler.txt"

echo "== the paper's recipe, ${TRAIN_S} s"
train() {  # workdirs in /tmp (the device returns a limited number of files); metrics, config and last figure to $OUT
  local name=$1
  shift
  timeout "$TRAIN_S" "$PYTHON" -m stn_jax.main --workdir="/tmp/gpu_session/$name" "$@" --config.num_seeds=1 \
    --config.checkpoints_to_keep=1 > "$OUT/$name.log" 2>&1
  echo "$name exit $?"
  mkdir -p "$OUT/$name"
  cp "/tmp/gpu_session/$name/metrics.jsonl" "/tmp/gpu_session/$name/config.json" "$OUT/$name/"
  cp "$(ls /tmp/gpu_session/"$name"/figures/transform_step*.png 2>/dev/null | tail -1)" "$OUT/$name/" 2>/dev/null
}
rts=(--config=configs/paper_table1.py:paper --config.dataset.name=paper-RTS --config.model.classifier.kind=cnn)
train rts_cnn "${rts[@]}" --config.model.transform=none --config.model.match_params_of=affine \
  --config.model.localization.kind=cnn &
train rts_st_cnn_aff "${rts[@]}" --config.model.transform=affine --config.model.localization.kind=cnn &
train tc_st_cnn_aff --config=configs/paper_tc.py:paper --config.model.transform=affine \
  --config.model.classifier.kind=cnn --config.model.localization.kind=cnn &
wait
for name in rts_cnn rts_st_cnn_aff tc_st_cnn_aff; do
  echo "-- $name"
  grep -E "eval at step|test error|steps/s" "$OUT/$name.log" | tail -4
done
date -u | tee -a "$OUT/gpu.txt"
