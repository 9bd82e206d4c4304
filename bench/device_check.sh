#!/usr/bin/env bash
# The GPU check of issue 5, as commands for a lent GPU machine (its device
# time is short: about 15 minutes a session, start-up included). From the
# repository root, DATA_ROOT holding DBP15K/zh_en (default: $PSQE_DATA, then
# ../shared/data):
#
#   OUT=results bash bench/device_check.sh DATA_ROOT               # the checks
#   OUT=results bash bench/device_check.sh --reproduce DATA_ROOT   # then, warm
#
# Each step is logged to $OUT/device_check.log, under its own time limit and
# one deadline ($DEVICE_CHECK_SECONDS, default 570: a device command may run
# 600 s), in order of what matters most. The checks:
#
#   1. build psqe in place against the machine's torch, with the CUDA kernels
#      (TORCH_CUDA_ARCH_LIST defaults to the visible GPU's architecture);
#   2. `pytest -m cuda`: the CUDA kernels against their CPU oracles, and the
#      CUDA paths of training and seed generation (tests/test_cuda_training.py),
#      into $OUT/cuda-tests.xml;
#   3. the kernels' CUDA benchmarks (fused top-k at 100k, the 1M scaling case),
#      into $OUT/gpu-bench-kernels.json;
#   4. the DBP15K zh_en R2 feature file, with `psqe features --no-text` (no
#      text model there: the text slots that only the seed generator reads are
#      left out; the aligners' inputs are those of the CPU runs' file);
#   5. the aligners' epoch times and batch rows on the GPU, into
#      $OUT/gpu-bench-aligners.json, then MEAformer's whole 250-epoch
#      schedule, into $OUT/gpu-bench-meaformer.json.
#
# --reproduce trains the aligners on the GPU on the seed sets the CPU reports
# used (bench/results/seeds/DBP15K-zh_en-R2), at each model's default
# schedule, and returns the report folder as $OUT/report.tgz. Run it right
# after the checks, on the warm machine: the build and the feature file are
# then still there (else they are made again). MODELS: the aligners (default
# meaformer,mclea,eva,pcmea: the slowest last, so that a deadline cuts it);
# DEVICE (default cuda) and EPOCHS (default: each model's) allow a dry run on
# a CPU. `--no-build` skips the build. Exit status: the first failing step's.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to the folder for the results}
BUILD=1 MODE=checks
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) BUILD=0; shift ;;
    --reproduce) MODE=reproduce; shift ;;
    *) break ;;
  esac
done
DATA=${1:-${PSQE_DATA:-../shared/data}}
DATA=$(cd "$DATA" 2>/dev/null && pwd || echo "$DATA")
PY=${PYTHON:-python3}
LOG="$OUT/device_check.log"
WORK=build/device-check  # ignored: kept between calls on a warm machine
FEATURES="$WORK/DBP15K-zh_en-R2-no-text.safetensors"
export PYTHONUNBUFFERED=1 PSQE_DATA="$DATA" PSQE_BENCH_FEATURES="$PWD/$FEATURES" HF_HUB_OFFLINE=1
mkdir -p "$WORK"
status=0
DEADLINE=$((SECONDS + ${DEVICE_CHECK_SECONDS:-570}))

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
  step features 150 "$PY" -m psqe.cli features DBP15K/zh_en --root "$DATA" --setting R2 --no-text --out "$FEATURES"
}

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
if [ ! -f "$DATA/DBP15K/zh_en/triples_1" ]; then
  echo "no DBP15K/zh_en under $DATA: nothing on DBP15K can run" | tee -a "$LOG"
fi
if [ $BUILD -eq 1 ] && { [ "$MODE" = checks ] || ! ls psqe/_C*.so >/dev/null 2>&1; }; then
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST
  fi
  export FORCE_CUDA=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-$(nproc)}
  step build 300 "$PY" setup.py build_ext --inplace || exit $status
fi
step backends 60 "$PY" -c 'import torch, psqe.ops as o; print(o.backends(), torch.__version__, torch.cuda.get_device_name())'

if [ "$MODE" = reproduce ]; then
  REPORT="$WORK/reproduce-DBP15K-zh_en-R2"
  rm -rf "$REPORT" && mkdir -p "$REPORT/seeds" && cp bench/results/seeds/DBP15K-zh_en-R2/* "$REPORT/seeds/"
  features && step reproduce 480 "$PY" -m psqe.cli reproduce --dataset DBP15K/zh_en --setting R2 --root "$DATA" \
    --models "${MODELS:-meaformer,mclea,eva,pcmea}" --features "$FEATURES" --out "$REPORT" --protocols legacy,clean \
    --no-supervised --device "${DEVICE:-cuda}" ${EPOCHS:+--epochs "$EPOCHS"}
  tar czf "$OUT/report.tgz" -C "$REPORT" --exclude ./seeds . && echo "report folder: $OUT/report.tgz" | tee -a "$LOG"
  exit "$status"
fi

step cuda-tests 200 "$PY" -m pytest tests -m cuda -p no:cacheprovider -q -rs --junitxml="$OUT/cuda-tests.xml"
BENCH=("$PY" -m pytest -m cuda --bench-big -p no:cacheprovider -q -rs --benchmark-columns=median,min,max,rounds)
step kernel-bench 120 "${BENCH[@]}" bench/test_bench_topk.py bench/test_bench_scaling.py \
  --benchmark-json="$OUT/gpu-bench-kernels.json"
features
step aligner-bench 200 "${BENCH[@]}" bench/test_bench_aligners.py -k "not schedule" \
  --benchmark-json="$OUT/gpu-bench-aligners.json"
step meaformer-schedule 200 "${BENCH[@]}" bench/test_bench_aligners.py -k schedule \
  --benchmark-json="$OUT/gpu-bench-meaformer.json"
exit "$status"
