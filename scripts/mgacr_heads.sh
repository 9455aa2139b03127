#!/usr/bin/env bash
# MGACR alone with weights that act, CBAM against 1x1-conv heads, and the plain ResNet18 (issue 16), paired by seed.
# The `siim-cpu` schedule (128 px, 8 epochs), no Stage I, cross-entropy; MGACR on layers 2-3, robust form,
# weight 3 on the attention terms and 1 on the feature term. Each finished run's test metrics, test predictions
# and per-epoch log are copied to results/mgacr-heads/<arm>_seed<S>.{json,npz}, <arm>_seed<S>_metrics.jsonl
# (commit them); a run whose record exists is skipped, so a later session continues where this one stopped.
#
#   bash scripts/mgacr_heads.sh "0 1 2" "plain cbam conv1x1"     # DATA=../shared/data/siim-covid19 OUT=runs/mgacr-heads
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-"0 1 2"}; arms=${2:-"plain cbam conv1x1"}
data=${DATA:-../shared/data/siim-covid19}; out=${OUT:-runs/mgacr-heads}; rec=results/mgacr-heads
py=${PYTHON:-python}
mkdir -p "$rec"
for s in $seeds; do
  for arm in $arms; do
    name=${arm}_seed$s; run=$out/$arm-seed$s
    [ -f "$rec/$name.json" ] && continue
    case $arm in
      plain) extra=(train.mgacr.attention=false train.mgacr.feature=false) ;;
      cbam|conv1x1) extra=("train.mgacr.layers=[2,3]" train.mgacr.weight_attention=3 train.mgacr.weight_feature=1
                           train.mgacr.head=$arm train.keep_attention_heads=true) ;;
      *) echo "unknown arm $arm (plain, cbam, conv1x1)" >&2; exit 2 ;;
    esac
    if [ ! -f "$run/test_metrics.json" ]; then
      "$py" -m deeppneumonia.cli -q train -c siim-cpu "data.path=$data" "run.seed=$s" "run.out_dir=$run" \
        run.progress=false train.pretrained=false train.loss.kind=ce "${extra[@]}"
    fi
    cp "$run/train/metrics.jsonl" "$rec/${name}_metrics.jsonl"
    cp "$run/test_predictions.npz" "$rec/$name.npz"
    cp "$run/test_metrics.json" "$rec/$name.json"
  done
done
