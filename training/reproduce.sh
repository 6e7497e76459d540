#!/usr/bin/env bash
# Rebuild uni1_core/demo_model/ from nothing, exactly as the committed weights were made
# (same seeds, steps and thread counts). Intermediate files go to $WORK (default /tmp/uni1_train).
# Run from the repository root: bash training/reproduce.sh   (about 56-60 minutes on 2 CPU cores)
set -euo pipefail
PY=${PY:-.venv/bin/python}
WORK=${WORK:-/tmp/uni1_train}
OUT=${OUT:-uni1_core/demo_model}
mkdir -p "$WORK"

# 1. MoVQ: encoder, codebook and decoder from scratch, then a second schedule from there. From
#    here on the encoder and the codebook are frozen: the transformer is trained on their codes.
$PY -m training.train_movq --crop-steps 600 --full-steps 200 --out "$WORK/movq_stage1.safetensors"
$PY -m training.train_movq --init "$WORK/movq_stage1.safetensors" --seed 1 --lr 1e-3 \
    --crop-steps 700 --full-steps 300 --out "$WORK/movq_frozen.safetensors"
# 2. three decoder-only MoVQ stages, in the background on one thread: sharper pictures from
#    exactly the same codes (the script checks that no code changes), so they may run beside the
#    transformer, which trains on the codes of the frozen encoder.
(
  $PY -m training.train_movq --threads 1 --init "$WORK/movq_frozen.safetensors" --decoder-only --seed 2 --lr 5e-4 \
      --crop-steps 0 --full-steps 600 --out "$WORK/movq_dec.safetensors"
  $PY -m training.train_movq --threads 1 --init "$WORK/movq_dec.safetensors" --decoder-only --seed 3 --lr 3e-4 \
      --crop-steps 0 --full-steps 600 --out "$WORK/movq_dec2.safetensors"
  $PY -m training.train_movq --threads 1 --init "$WORK/movq_dec2.safetensors" --decoder-only --seed 4 --lr 2e-4 \
      --crop-steps 0 --full-steps 600 --out "$WORK/movq_dec3.safetensors"
) &
DECODER=$!
# 3. the transformer on the frozen codes (40 000 scenes, encoded once into data.pt), grounded
#    captions (the sentence, then the scene's layout map), one schedule
$PY -m training.train_transformer --movq "$WORK/movq_frozen.safetensors" --out "$WORK/demo_model" \
    --scenes 40000 --steps 1300 --batch 32 --hidden 192 --layers 6 --heads 6 --save-every 100 \
    --data-cache "$WORK/data.pt" --policy '{"cfg_scale": 2.0, "top_n_sigma": 1.0}'
#    then a second, shorter schedule from there, on the same scenes (new captions and batch order)
$PY -m training.train_transformer --init "$WORK/demo_model" --movq "$WORK/movq_frozen.safetensors" \
    --out "$WORK/demo_model_b" --scenes 40000 --data-seed 1 --seed 5 --steps 600 --lr 1e-3 --batch 32 \
    --hidden 192 --layers 6 --heads 6 --save-every 100 --data-cache "$WORK/data.pt" --policy '{"cfg_scale": 2.0, "top_n_sigma": 1.0}'
#    and a short third schedule that reads corrupted codes (3 in 10 replaced by a neighbour's or a
#    random code; the targets stay clean), so the model leans less on its left neighbour, which
#    the stale drafts of speculative decoding get wrong
$PY -m training.train_transformer --init "$WORK/demo_model_b" --movq "$WORK/movq_frozen.safetensors" \
    --out "$WORK/demo_model_c" --scenes 40000 --data-seed 1 --seed 7 --steps 200 --lr 5e-4 --batch 32 \
    --hidden 192 --layers 6 --heads 6 --save-every 100 --data-cache "$WORK/data.pt" --corrupt 0.3 \
    --policy '{"cfg_scale": 2.0, "top_n_sigma": 1.0}'
wait "$DECODER"
# 4. assemble the folder
mkdir -p "$OUT"
cp "$WORK"/demo_model_c/{config.json,model.safetensors,tokenizer.json,tokenizer_config.json} "$OUT/"
cp "$WORK/movq_dec3.safetensors" "$OUT/movq.safetensors"
echo "demo model written to $OUT"
