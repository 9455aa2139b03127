#!/usr/bin/env bash
# MGACR with weights that act, paired by seed against the plain ResNet18 (issue 16), and what Stage I and the
# class-balanced focal loss add to it. The `siim-cpu` schedule (128 px, 8 epochs); MGACR on layers 2-3, robust
# form, weight 3 on the attention terms and 1 on the feature term. Arms:
#   plain    no MGACR, no Stage I, cross-entropy
#   cbam     MGACR with the paper's CBAM heads, no Stage I, cross-entropy
#   conv1x1  MGACR with 1x1-conv heads, no Stage I, cross-entropy (the `siim-mgacr-cpu` preset)
#   focal    conv1x1 + the class-balanced focal loss (Eq. 9), no Stage I
#   stage1   conv1x1 + the seed's Stage I encoder, cross-entropy
#   full     conv1x1 + the seed's Stage I encoder + the class-balanced focal loss: the paper's full method
#   stage1r  stage1 with the encoder's convolutions scaled back to a fresh network's norms (train.encoder_rescale)
#   fullr    full with train.encoder_rescale=true
#   fullr2   fullr with only the stem, layer1 and layer2 of the encoder loaded (train.encoder_stages=2)
#   stage1s  stage1 with a Stage I trained by SGD's own SimCLR recipe (lr 0.06, weight decay 5e-4; the preset's
#            lr 0.3 / weight decay 1e-5 are LARS values) in $OUT/simclr-sgd-seed<S>
#   fulls    full with that Stage I encoder
#   fullsfit fulls trained on the training and validation patients together for the same epochs, last epoch kept
#            (train.final_fit: the recipe for a model to ship; the test part stays unseen)
#   <arm>12  any arm above trained for 12 epochs instead of 8 (same cosine schedule, stretched): fulls12, fullsfit12
# Stage I (the preset's SimCLR, run.seed=S) is trained once per seed in $OUT/simclr-seed<S> and shared by the
# stage1 and full arms. Each finished run's test metrics, test predictions and per-epoch log are copied to
# results/mgacr-heads/<arm>_seed<S>.{json,npz}, <arm>_seed<S>_metrics.jsonl (commit them), Stage I's log to
# simclr_seed<S>_metrics.jsonl; a run whose record exists is skipped, so a later session continues where this one
# stopped.
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
    longer=()
    if [[ $arm == *12 ]]; then arm=${arm%12}; longer=(train.optim.epochs=12); fi
    mgacr=("train.mgacr.layers=[2,3]" train.mgacr.weight_attention=3 train.mgacr.weight_feature=1
           train.mgacr.head=conv1x1 train.keep_attention_heads=true)
    simclr=$out/simclr-seed$s; simlog=simclr_seed$s; pre=()
    if [[ $arm == stage1s || $arm == fulls* ]]; then
      simclr=$out/simclr-sgd-seed$s; simlog=simclr-sgd_seed$s; pre=(pretrain.optim.lr=0.06 pretrain.optim.weight_decay=5e-4)
    fi
    encoder=$simclr/pretrain/encoder.safetensors
    case $arm in
      plain) extra=(train.pretrained=false train.loss.kind=ce train.mgacr.attention=false train.mgacr.feature=false) ;;
      cbam) extra=(train.pretrained=false train.loss.kind=ce "${mgacr[@]}" train.mgacr.head=cbam) ;;
      conv1x1) extra=(train.pretrained=false train.loss.kind=ce "${mgacr[@]}") ;;
      focal) extra=(train.pretrained=false train.loss.kind=cb_focal "${mgacr[@]}") ;;
      stage1|stage1r|stage1s) extra=(train.pretrained=true "train.encoder=$encoder" train.loss.kind=ce "${mgacr[@]}") ;;
      full|fullr|fullr2|fulls|fullsfit) extra=(train.pretrained=true "train.encoder=$encoder" train.loss.kind=cb_focal "${mgacr[@]}") ;;
      *) echo "unknown arm $arm (plain, cbam, conv1x1, focal, stage1, full, stage1r, fullr, fullr2, stage1s, fulls, fullsfit)" >&2; exit 2 ;;
    esac
    case $arm in
      stage1|full|stage1s|fulls) extra+=(train.encoder_rescale=false) ;;
      fullsfit) extra+=(train.encoder_rescale=false train.final_fit=true) ;;
      stage1r|fullr) extra+=(train.encoder_rescale=true) ;;
      fullr2) extra+=(train.encoder_rescale=true train.encoder_stages=2) ;;
    esac
    if [[ $arm == stage1* || $arm == full* ]] && [ ! -f "$encoder" ]; then
      "$py" -m deeppneumonia.cli -q pretrain -c siim-cpu "data.path=$data" "run.seed=$s" "run.out_dir=$simclr" \
        run.progress=false "${pre[@]}"
      cp "$simclr/pretrain/metrics.jsonl" "$rec/${simlog}_metrics.jsonl"
    fi
    if [ ! -f "$run/test_metrics.json" ]; then
      "$py" -m deeppneumonia.cli -q train -c siim-cpu "data.path=$data" "run.seed=$s" "run.out_dir=$run" \
        run.progress=false "${extra[@]}" "${longer[@]}"
    fi
    cp "$run/train/metrics.jsonl" "$rec/${name}_metrics.jsonl"
    cp "$run/test_predictions.npz" "$rec/$name.npz"
    cp "$run/test_metrics.json" "$rec/$name.json"
  done
done
