#!/usr/bin/env bash
# The GPU check of issue 5, as two commands for a lent GPU machine (device
# time is short: 15 minutes a session, start-up included). From the
# repository root, DATA_ROOT holding DBP15K/zh_en (default: $PSQE_DATA, then
# ../shared/data):
#
#   OUT=results bash bench/device_check.sh DATA_ROOT               # the checks
#   OUT=results bash bench/device_check.sh --reproduce DATA_ROOT   # then, warm
#
# Each step is logged to $OUT/device_check.log under its own time limit, and
# all under one deadline: $DEVICE_CHECK_SECONDS, default 360 for the checks
# and 300 for --reproduce (a device command may run 600 s; size both to the
# session's device time left). In order of what matters most, the checks:
#
#   1. build psqe in place against the machine's torch with the CUDA kernels
#      (TORCH_CUDA_ARCH_LIST: the visible GPU's architecture), and stop unless
#      psqe then reports its CUDA kernels;
#   2. `pytest -m cuda`: the CUDA kernels against their CPU oracles, and the
#      CUDA paths of training and seed generation (tests/test_cuda_training.py),
#      into $OUT/cuda-tests.xml;
#   3. the fused top-k's CUDA benchmark, into $OUT/gpu-bench-topk.json;
#   4. the DBP15K zh_en R2 feature file, with `psqe features --no-text` (no
#      text model there: the text slots that only the seed generator reads are
#      left out; the aligners read the visual modality and the relation bags);
#   5. MEAformer's whole 250-epoch schedule on the GPU
#      ($OUT/gpu-bench-meaformer.json), then every aligner's epoch time and
#      batch rows against the full pass ($OUT/gpu-bench-aligners.json); each
#      aligner run also lands in $OUT/aligner-runs.jsonl as soon as it ends;
#   6. the 1M-entity scaling case, if time is left ($OUT/gpu-bench-scaling.json).
#
# --reproduce trains on the GPU on the seed sets the CPU reports used
# (bench/results/seeds/DBP15K-zh_en-R2), at each model's default schedule,
# one model after another into one report folder, and returns it as
# $OUT/report.tgz after each model. Run it right after the checks, while the
# machine is warm (the build, the feature file and a cut report are then
# still there and are reused; else they are made again). MODELS: the
# aligners, in order (default meaformer); DEVICE (default cuda) and EPOCHS
# (default: each model's) allow a dry run on a CPU. `--no-build` skips the
# build. Exit status: the first failing step's.
set -uo pipefail
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
BUILD=1 MODE=checks
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --reproduce) MODE=reproduce; shift ;;
    *) break ;;
  esac
done
DATA=${1:-${PSQE_DATA:-}}
if [ -n "$DATA" ]; then DATA=$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA"); fi
cd "$(dirname "$0")/.."
DATA=${DATA:-$(cd ../shared/data 2>/dev/null && pwd || echo ../shared/data)}
PY=${PYTHON:-python3}
LOG="$OUT/device_check.log"
WORK=build/device-check  # ignored: kept between calls on a warm machine
FEATURES="$PWD/$WORK/DBP15K-zh_en-R2-no-text.safetensors"
export PYTHONUNBUFFERED=1 PSQE_DATA="$DATA" PSQE_BENCH_FEATURES="$FEATURES" HF_HUB_OFFLINE=1
mkdir -p "$WORK"
status=0
if [ "$MODE" = checks ]; then DEADLINE=$((SECONDS + ${DEVICE_CHECK_SECONDS:-360}))
else DEADLINE=$((SECONDS + ${DEVICE_CHECK_SECONDS:-300})); fi

step() {  # step NAME SECONDS COMMAND...: COMMAND under min(SECONDS, time to the deadline); keeps the first failure
  local name=$1 limit=$2 rc
  shift 2
  local left=$((DEADLINE - SECONDS))
  if [ "$left" -lt "$limit" ]; then limit=$left; fi
  if [ "$limit" -le 5 ]; then
    echo "== $name: skipped, the deadline is near" | tee -a "$LOG"
    if [ "$status" -eq 0 ]; then status=124; fi
    return 124
  fi
  echo "== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$LOG"
  timeout "$limit" "$@" >>"$LOG" 2>&1
  rc=$?
  echo "== $name: exit $rc ($(date -u +%T))" | tee -a "$LOG"
  if [ $rc -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  return $rc
}

features() {  # the feature file, unless a warm machine has it already
  if [ -f "$FEATURES" ]; then echo "== features: $FEATURES is there" | tee -a "$LOG"; return 0; fi
  # The summary it prints into the log holds the calibrated "noise_scale": the CPU runs' file has
  # 1.1027850062575126; another value means other visual features.
  step features 150 "$PY" -m psqe.cli features DBP15K/zh_en --root "$DATA" --setting R2 --no-text --out "$FEATURES"
}

{ nvidia-smi; nvcc --version; } >>"$LOG" 2>&1
if [ ! -f "$DATA/DBP15K/zh_en/triples_1" ]; then
  echo "no DBP15K/zh_en under $DATA: nothing on DBP15K can run" | tee -a "$LOG"
fi
if [ $BUILD -eq 1 ] && { [ "$MODE" = checks ] || ! ls psqe/_C*.so >/dev/null 2>&1; }; then
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
  fi
  if [ -z "${CUDA_HOME:-}" ]; then  # torch's default, unless nvcc lives elsewhere
    if [ -x /usr/local/cuda/bin/nvcc ]; then CUDA_HOME=/usr/local/cuda
    elif command -v nvcc >/dev/null; then CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")"); fi
    export CUDA_HOME
  fi
  export FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-$(nproc)}
  step build 300 "$PY" setup.py build_ext --inplace || exit $status
fi
step backends 60 "$PY" -c 'import sys, torch, psqe.ops as o; b = o.backends(); print(b, torch.__version__)
assert sys.argv[1] == "cpu" or (torch.cuda.is_available() and b["compiled_cuda"]), "no GPU, or psqe without its CUDA kernels"
print(torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU (dry run)")' "${DEVICE:-cuda}" || exit $status

if [ "$MODE" = reproduce ]; then
  REPORT="$WORK/reproduce-DBP15K-zh_en-R2"
  mkdir -p "$REPORT/seeds"
  for f in bench/results/seeds/DBP15K-zh_en-R2/*; do [ -f "$REPORT/seeds/$(basename "$f")" ] || cp "$f" "$REPORT/seeds/"; done
  features || exit $status
  IFS=, read -r -a models <<<"${MODELS:-meaformer}"
  for model in "${models[@]}"; do
    step "reproduce-$model" 600 "$PY" -m psqe.cli reproduce --dataset DBP15K/zh_en --setting R2 --root "$DATA" \
      --models "$model" --features "$FEATURES" --out "$REPORT" --protocols legacy,clean --no-supervised \
      --device "${DEVICE:-cuda}" ${EPOCHS:+--epochs "$EPOCHS"}
    tar czf "$OUT/report.tgz" -C "$REPORT" --exclude ./seeds . && echo "report folder: $OUT/report.tgz" | tee -a "$LOG"
  done
  exit "$status"
fi

BENCH=("$PY" -m pytest -m cuda --bench-big -p no:cacheprovider -q -rs --benchmark-columns=median,min,max,rounds)
export PSQE_BENCH_RECORD="$OUT/aligner-runs.jsonl"
step cuda-tests 200 "$PY" -m pytest tests -m cuda -p no:cacheprovider -q -rs --junitxml="$OUT/cuda-tests.xml"
step topk-bench 60 "${BENCH[@]}" bench/test_bench_topk.py --benchmark-json="$OUT/gpu-bench-topk.json"
if features; then
  step meaformer-schedule 150 "${BENCH[@]}" bench/test_bench_aligners.py -k schedule \
    --benchmark-json="$OUT/gpu-bench-meaformer.json"
  step aligner-bench 200 "${BENCH[@]}" bench/test_bench_aligners.py -k "not schedule" \
    --benchmark-json="$OUT/gpu-bench-aligners.json"
fi
step scaling-bench 200 "${BENCH[@]}" bench/test_bench_scaling.py --benchmark-json="$OUT/gpu-bench-scaling.json"
exit "$status"
