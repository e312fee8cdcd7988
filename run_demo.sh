#!/usr/bin/env bash
# The whole workflow on generated sample data: two single models (train, eval of each
# checkpoint, checkpoint averaging), their float16 ensemble, and a submission CSV.
# Usage: bash run_demo.sh [WORK_DIR]   (default: ./demo)
set -euo pipefail
cd "$(dirname "$0")"
WORK=${1:-demo}
DATA=$WORK/data
PY=${PYTHON:-python}
MODEL_FLAGS="--frame_features --feature_names=rgb,audio --feature_sizes=1024,128 --num_classes=100
  --iterations=30 --moe_num_mixtures=2 --gating=True --moe_prob_gating=True --netvlad_relu=False
  --model=NetVLADModelLF"
STEP=0
SUMMARY=()

heading() {
  STEP=$((STEP + 1))
  printf '\n== %d. %s\n' "$STEP" "$*" >&2
}

# Runs eval.py, passing its output through, and leaves the GAP of its JSON line in $GAP.
evaluate() {
  local out
  out=$($PY eval.py "$@")
  printf '%s\n' "$out"
  GAP=$(printf '%s\n' "$out" | grep '^{' | tail -1 | $PY -c 'import json, sys; print(json.load(sys.stdin)["gap"])')
}

heading "Sample data: $DATA"
$PY make_sample_data.py --output_dir="$DATA" --num_classes=100 --videos_per_shard=100

for SPEC in c8h64 c16h32; do
  C=${SPEC#c}; C=${C%h*}; H=${SPEC#*h}
  RUN=$WORK/run_$SPEC
  heading "Train NetVLADModelLF $SPEC (300 steps): $RUN"
  $PY train.py --train_data_pattern="$DATA/frame/train*.tfrecord" --train_dir="$RUN" \
    $MODEL_FLAGS --netvlad_cluster_size="$C" --netvlad_hidden_size="$H" --batch_size=32 \
    --base_learning_rate=0.002 --max_steps=300 --export_model_steps=100 --num_epochs=100
  heading "Evaluate $SPEC at steps 110, 210, 300 (the model comes from $RUN/model_flags.json)"
  for CKPT in 110 210 300; do
    evaluate --eval_data_pattern="$DATA/frame/validate*.tfrecord" --train_dir="$RUN" \
      --batch_size=64 --run_once=True --checkpoint="model.ckpt-$CKPT.index"
  done
  SUMMARY+=("$SPEC step 300|$GAP")
  heading "Average $SPEC's checkpoints 110-300 and evaluate the average"
  $PY avg_checkpoints.py --prefix="$RUN/model.ckpt" --checkpoints_start_end=110,300 \
    --output_path="$RUN/avg_${SPEC}_110_300.ckpt"
  evaluate --eval_data_pattern="$DATA/frame/validate*.tfrecord" --train_dir="$RUN" \
    --batch_size=64 --run_once=True --checkpoint_file="avg_${SPEC}_110_300.ckpt-0"
  SUMMARY+=("$SPEC average 110-300|$GAP")
done

ENS=$WORK/ensemble
ENS_FLAGS="$MODEL_FLAGS --ensemble_num=2 --float16_flag=True
  --netvlad_cluster_size=8 --netvlad_hidden_size=64 --netvlad_cluster_size=16 --netvlad_hidden_size=32"
heading "Ensemble graph: a 10-step run of the float16 two-model graph, and its meta graph"
$PY train.py --train_data_pattern="$DATA/frame/train*.tfrecord" --train_dir="$ENS" $ENS_FLAGS \
  --batch_size=32 --max_steps=10
$PY eval.py --train_dir="$ENS" --run_once=True --create_meta_only
heading "Fill the ensemble with the two averaged models, converted to float16"
$PY overwrite_float16_ckpt.py --train_dir="$ENS" --inference_model=inference_model_10 \
  --out_name=inference_model_ensemble_YHLS \
  --checkpoints="$WORK/run_c8h64/inference_model_avg_c8h64_110_300.ckpt-0,$WORK/run_c16h32/inference_model_avg_c16h32_110_300.ckpt-0"
heading "Evaluate the ensemble with mixing weights 0.6/0.4, then save it as inference_model"
for FORCE in False True; do
  evaluate --eval_data_pattern="$DATA/frame/validate*.tfrecord" --train_dir="$ENS" \
    --ensemble_wts=0.6 --ensemble_wts=0.4 --batch_size=64 --run_once=True \
    --checkpoint_file=inference_model_ensemble_YHLS-0 --force_output_model_name=$FORCE
done
SUMMARY+=("float16 ensemble 0.6/0.4|$GAP")
heading "Size of the ensemble against the 1 GiB limit"
SIZE=$($PY checkpoint_size.py --checkpoint="$ENS/inference_model")
printf '%s\n' "$SIZE"
BYTES=$(printf '%s\n' "$SIZE" | sed -n 's/^total as stored: \([0-9,]*\) bytes.*/\1/p')
heading "Submission CSV and model tgz"
$PY inference.py --train_dir="$ENS" --input_data_pattern="$DATA/frame/test*.tfrecord" \
  --output_file="$WORK/submission.csv" --output_model_tgz="$WORK/inference_model.tgz"

printf '\n== Summary (GAP on %s)\n' "$DATA/frame/validate*.tfrecord"
for ROW in "${SUMMARY[@]}"; do
  printf '  %-28s GAP %s\n' "${ROW%|*}" "${ROW#*|}"
done
printf '  %-28s %s bytes (limit 1,073,741,824)\n' "ensemble size" "$BYTES"
printf '  %-28s %s (%d videos)\n' "submission" "$WORK/submission.csv" \
  "$(($(wc -l < "$WORK/submission.csv") - 1))"
