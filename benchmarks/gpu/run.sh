#!/usr/bin/env bash
# One command on a lent GPU machine (device tool: carry [".gpu_wheels"], after benchmarks/gpu/prepare.sh
# here): installs the carried wheels, records the machine (machine.txt), then runs six parts, each under
# a time budget so the whole ends within ~9 minutes and a cut part still leaves the others' results:
#   imports: the project and its dependencies import (versions printed)
#   tests: the GPU-only tests (pytest -m gpu: cuDNN attention, FSDP towers on the device mesh)
#   towers: benchmarks.towers, bf16 at batches 32/128/256 (+ fp32 parity at 32), JAX vs PyTorch CUDA, MFU
#   predict: main_job's run compiled for the lent GPU (--compile_only=gpu:h100|h200:1x1, from nvidia-smi's
#     name): per-program peak bytes and roofline times, the run's estimate (prediction.json), to set beside
#     what towers and main_job measure
#   main_job: the main job on a medium synthetic set with base-size towers (fused, bf16), time per stage
#   throughput: benchmarks.throughput, every row, JAX and PyTorch on the GPU
# Results: OUT/summary.txt (one line a part) and OUT/gpu_results.tar.gz (every JSON and log), rewritten
# after each part (the device tool brings back 8 files at most, hence the archive). OUT is --out, else
# $OUT (set by the device tool), else a new temporary folder.
#
#   bash benchmarks/gpu/run.sh [--out DIR]             # on the device
#   bash benchmarks/gpu/run.sh --dry-run [--out DIR]   # here, on CPU (CI): tiny towers and sizes, no wheel
#       install, JAX on CPU, grain without worker processes; the GPU tests are collected and skipped;
#       the prediction is for this CPU (--compile_only=cpu)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
dry=0
out=${OUT:-}
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry=1 ;;
    --out)
      [[ $# -ge 2 ]] || { echo "run.sh: --out needs a folder" >&2; exit 2; }
      out=$2
      shift
      ;;
    -h | --help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $out ]] || out=$(mktemp -d)
mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/smartvlm_gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
python=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR="$work/jax_cache"

if ((dry)); then
  export JAX_PLATFORMS=cpu
  budget=(120 120 180 240 120)
  predict_target=cpu predict_search=1
  tower_args=(--tiny --batches "2,4" --fp32-batches 2 --rounds 2)
  job_args=(--towers tiny --per-puzzle 12 --epochs 1 --batch 32 --workers 0)
  throughput_args=(--tiny --repeats 2)
else
  if compgen -G ".gpu_wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpu_wheels/*.whl || { echo "run.sh: installing the carried wheels failed" >&2; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    echo "run.sh: no .gpu_wheels/ (run benchmarks/gpu/prepare.sh here, carry .gpu_wheels)" >&2
  fi
  export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false  # JAX and PyTorch share the GPU
  budget=(80 140 100 120 60)
  predict_search=2
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
  case $gpu_name in  # the lent kinds; 1x1: one host, one GPU
    *H200*) predict_target=gpu:h200:1x1 ;;
    *H100*) predict_target=gpu:h100:1x1 ;;
    *A100*) predict_target=gpu:a100:1x1 ;;
    *) predict_target="" ;;
  esac
  peak=989  # dense bf16 TFLOP/s of an H100/H200 SXM (datasheet)
  tower_args=(--batches "32,128,256" --fp32-batches 32 --rounds 6 --peak-tflops "$peak")
  job_args=(--towers base --per-puzzle 300 --epochs 3 --batch 128 --workers 4)
  throughput_args=(--dtype bfloat16 --peak-tflops "$peak" --batch 64 --repeats 5 --no-compile)
fi

save() {  # the archive and the summary, after every part (a cut run still returns what it has)
  tar -czf "$out/gpu_results.tar.gz.tmp" -C "$work" --exclude=jax_cache --exclude=main_job --exclude=scratch . &&
    mv "$out/gpu_results.tar.gz.tmp" "$out/gpu_results.tar.gz"
  cp "$work/summary.txt" "$out/summary.txt"
}
part() {  # part NAME SECONDS COMMAND...: runs under its budget, logs to NAME.log, one summary line
  local name=$1 seconds=$2 start rc
  shift 2
  start=$(date +%s)
  timeout --kill-after=5 "$seconds" "$@" >"$work/$name.log" 2>&1
  rc=$?
  echo "$name: exit $rc$( ((rc == 124 || rc == 137)) && echo ' (budget reached)') in $(($(date +%s) - start)) s of $seconds" |
    tee -a "$work/summary.txt"
  tail -n 25 "$work/$name.log" | tr '\r' '\n' | grep -v '^\s*$' | tail -n 25
  save
}

{
  date -u
  nvidia-smi 2>&1 || echo "no nvidia-smi"
  "$python" -c "import sys; print(sys.version)"
  "$python" -m pip list 2>/dev/null
} >"$work/machine.txt"
grep -E "NVIDIA|Driver|MiB" "$work/machine.txt" | head -5
echo "run.sh: $( ((dry)) && echo dry run || echo GPU run), results in $out" | tee "$work/summary.txt"
part imports 45 "$python" -c "import jax, flax, optax, orbax.checkpoint, grain, tensorflow_datasets, transformers
import smartvlm_jax.train, smartvlm_jax.data.pipeline, benchmarks.throughput
print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__,
      'transformers', transformers.__version__)"
part tests "${budget[0]}" "$python" -m pytest -q -m gpu tests/gpu -p no:cacheprovider -rs
part towers "${budget[1]}" "$python" -m benchmarks.towers "${tower_args[@]}" --json "$work/towers.json"
if [[ -n $predict_target ]]; then
  part predict "${budget[4]}" "$python" -m benchmarks.gpu.main_job --workdir "$work/predict" "${job_args[@]}" \
    --dtype bfloat16 --compile-only "$predict_target" --search "$predict_search" --json "$work/prediction.json"
else
  part predict 5 bash -c "echo \"run.sh: no compile-only target for the GPU '$gpu_name'\"; exit 1"
fi
part main_job "${budget[2]}" "$python" -m benchmarks.gpu.main_job --workdir "$work/main_job" "${job_args[@]}" \
  --dtype bfloat16 --json "$work/main_job.json"
part throughput "${budget[3]}" "$python" -m benchmarks.throughput "${throughput_args[@]}" \
  --workdir "$work/scratch" --out "$work/throughput.json"
grep -c "exit 0 " "$work/summary.txt" | xargs -I{} echo "run.sh: {} of 6 parts exited 0" | tee -a "$work/summary.txt"
save
