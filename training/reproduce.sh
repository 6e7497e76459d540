#!/usr/bin/env bash
# Rebuild uni1_core/demo_model/ from nothing, exactly as the committed weights were made
# (same seeds, steps and thread counts). Intermediate files go to $WORK (default /tmp/uni1_train).
# Run from the repository root: bash training/reproduce.sh
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/uni1_train}
OUT=${OUT:-uni1_core/demo_model}
mkdir -p "$WORK"

# 1. MoVQ stage 1: encoder, codebook and decoder from scratch (smaller objects, one thread)
$PY -m training.train_movq --threads 1 --sizes 0.20,0.28,0.38 --out "$WORK/movq_stage1.safetensors"
# 2. MoVQ stage 2 on the final world; stopped half-way through its schedule. Its encoder and
#    codebook are final from here on: every later stage trains the decoder only.
$PY -m training.train_movq --init "$WORK/movq_stage1.safetensors" --seed 1 --lr 1e-3 \
    --crop-steps 500 --full-steps 300 --stop-at 400 --out "$WORK/movq_frozen.safetensors"
# 3. the transformer on the frozen codes (the decoder stages below do not change any code):
#    750 steps of a 3000-step schedule, then two shorter schedules from there
$PY -m training.train_transformer --movq "$WORK/movq_frozen.safetensors" --out "$WORK/demo_model_a" \
    --scenes 30000 --steps 3000 --stop-at 750 --batch 24 --hidden 192 --layers 6 --heads 6 --save-every 250 \
    --data-cache "$WORK/data.pt"
$PY -m training.train_transformer --init "$WORK/demo_model_a" --movq "$WORK/movq_frozen.safetensors" \
    --out "$WORK/demo_model_b" --steps 1500 --lr 2e-3 --seed 5 --batch 24 --hidden 192 --layers 6 --heads 6 \
    --save-every 250 --data-cache "$WORK/data.pt"
$PY -m training.train_transformer --init "$WORK/demo_model_b" --movq "$WORK/movq_frozen.safetensors" \
    --out "$WORK/demo_model" --steps 1500 --lr 1e-3 --seed 6 --batch 24 --hidden 192 --layers 6 --heads 6 \
    --policy '{"cfg_scale": 2.0}' --save-every 250 --data-cache "$WORK/data.pt"
# 4. decoder-only MoVQ stages (in the original run these ran beside step 3)
$PY -m training.train_movq --init "$WORK/movq_frozen.safetensors" --decoder-only --seed 2 --lr 5e-4 \
    --crop-steps 0 --full-steps 600 --out "$WORK/movq_dec.safetensors"
$PY -m training.train_movq --init "$WORK/movq_dec.safetensors" --decoder-only --seed 3 --lr 3e-4 \
    --crop-steps 0 --full-steps 600 --out "$WORK/movq_dec2.safetensors"
$PY -m training.train_movq --init "$WORK/movq_dec2.safetensors" --decoder-only --seed 4 --lr 2e-4 \
    --crop-steps 0 --full-steps 500 --out "$WORK/movq_dec3.safetensors"
# 5. assemble the folder
mkdir -p "$OUT"
cp "$WORK"/demo_model/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "$OUT/"
cp "$WORK/movq_dec3.safetensors" "$OUT/movq.safetensors"
echo "demo model written to $OUT"
