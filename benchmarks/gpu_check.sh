#!/usr/bin/env bash
# The GPU check of issue 17, one command on a machine with one CUDA GPU (sized for about 8 minutes on one H200):
#   1. the tests that need CUDA (tests/runtime/test_cuda.py: autocast augmentation, fp16 choice and resume, a step
#      under torch.cuda.set_sync_debug_mode("error"), GPU-resident split and pinned batches, compile, a one-process
#      NCCL group with SyncBatchNorm then compile);
#   2. the `paper` preset on SIIM (224 px) for GPU_CHECK_EPOCHS epochs of each stage, data resident on the GPU;
#   3. the model-only rate of both stages at the paper's batch sizes (benchmarks/distributed_scaling.py, which also
#      times the toolkit's own step), and the table: images/s of the run against the model-only rate.
#
# Install without network over a preinstalled torch, then run from the repository root:
#   pip install --no-deps --no-build-isolation -e .
#   bash benchmarks/gpu_check.sh [DATA]      # DATA: $GPU_CHECK_DATA, else ../shared/data/siim-covid19 (or shared/...)
# GPU_CHECK_DRY=1 runs the same steps on CPU at tiny sizes (the shipped NIH sample, 32 px, 1 epoch) to check the
# script anywhere; the CUDA tests then skip. Output folder: $GPU_CHECK_OUT (default a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if [[ "${GPU_CHECK_DRY:-0}" == "1" ]]; then
  DATA=${1:-${GPU_CHECK_DATA:-sample:nih}}
  DEVICE=cpu; SIZE=32; EPOCHS=${GPU_CHECK_EPOCHS:-1}; PRE_BATCH=32; BATCH=16; STEPS=2; WARMUP=1
  EXTRA=(run.precision=fp32 run.data_on_device=never)
else
  DATA=${1:-${GPU_CHECK_DATA:-../shared/data/siim-covid19}}
  [[ -e "$DATA" || "$DATA" == sample:* || ! -e shared/data/siim-covid19 ]] || DATA=shared/data/siim-covid19
  DEVICE=cuda; SIZE=224; EPOCHS=${GPU_CHECK_EPOCHS:-4}; PRE_BATCH=256; BATCH=16; STEPS=30; WARMUP=10
  EXTRA=(run.data_on_device=always)
fi
echo "== machine"
"$PY" - <<'PYEOF'
import os, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
PYEOF

echo "== 1. CUDA tests"
t0=$SECONDS
"$PY" -m pytest -q -rs -p no:cacheprovider tests/runtime/test_cuda.py
echo "(tests: $((SECONDS - t0)) s)"

echo "== 2. paper preset, $EPOCHS epoch(s) per stage, $DATA at $SIZE px on $DEVICE"
t0=$SECONDS
"$PY" -m deeppneumonia.cli run -c paper "data.path=$DATA" "data.size=$SIZE" "data.cache_dir=$OUT/cache" \
  "run.out_dir=$OUT/paper" "run.device=$DEVICE" run.progress=false \
  "pretrain.optim.epochs=$EPOCHS" "pretrain.optim.batch_size=$PRE_BATCH" \
  "train.optim.epochs=$EPOCHS" "train.optim.batch_size=$BATCH" "${EXTRA[@]}"
echo "(training run: $((SECONDS - t0)) s)"

echo "== 3. model-only rates (and the toolkit's step alone) at the run's batch sizes"
t0=$SECONDS
for b in "$PRE_BATCH" "$BATCH"; do
  "$PY" benchmarks/distributed_scaling.py --data "$DATA" --size "$SIZE" --batch "$b" --steps "$STEPS" \
    --warmup "$WARMUP" --procs 1 --device "$DEVICE" --cache-dir "$OUT/cache" --json "$OUT/model_only_$b.json" \
    $([[ "${GPU_CHECK_DRY:-0}" == "1" ]] && echo --precision fp32)
done
echo "(model-only: $((SECONDS - t0)) s)"

echo "== images/s of the paper run (its last epoch) against the model-only rate"
"$PY" - "$OUT" "$PRE_BATCH" "$BATCH" <<'PYEOF'
import json, sys
from pathlib import Path
out, pre_b, b = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
print("| stage | batch | run img/s (last epoch) | toolkit step img/s | model-only img/s | run vs model-only |")
print("|---|---:|---:|---:|---:|---:|")
for stage, batch in (("pretrain", pre_b), ("train", b)):
    log = [json.loads(x) for x in (out / "paper" / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
    bench = json.loads((out / f"model_only_{batch}.json").read_text())
    run, ref, step = log[-1]["images_per_second"], bench["model_only"][stage], bench["rows"][0][stage]
    print(f"| {'Stage I' if stage == 'pretrain' else 'Stage II'} | {batch} | {run:.1f} | {step:.1f} | {ref:.1f} | "
          f"{run / ref:.2f} |")
test = json.loads((out / "paper" / "test_metrics.json").read_text())
print("test:", {k: test.get(k) for k in ("images", "map", "study_map", "macro_f1", "train_minutes")})
PYEOF
echo "== done: $OUT"
