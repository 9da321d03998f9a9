#!/usr/bin/env bash
# Pre-train the structured StructBERT: title and heading tokens attend globally.
#
#   CORPUS=path/or/hub-id OUT=runs/structured bash examples/pretrain_structured.sh
#   ACCELERATE_CONFIG=examples/accelerate_configs/ddp.yaml bash examples/pretrain_structured.sh   # multi-GPU
#   bash examples/pretrain_structured.sh --max-steps 100   # extra options are passed to the trainer
#
# Its plain twin (examples/pretrain_plain.sh) uses the same options and seed on the arxiv_plain config.
# Re-running the same command resumes from the newest complete checkpoint in $OUT.
set -euo pipefail

CORPUS=${CORPUS:?set CORPUS to a corpus folder (structformer build-corpus) or a Hub dataset id}
OUT=${OUT:-runs/structbert-structured}
INIT_FROM=${INIT_FROM:-}            # e.g. a BERT/RoBERTa/Longformer checkpoint folder; empty = from scratch
TOKENIZER=${TOKENIZER:-}            # a tokenizer folder; empty = the --init-from one, or train WordPiece
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-}

launcher=(python)
if [[ -n "$ACCELERATE_CONFIG" ]]; then
  launcher=(accelerate launch --config_file "$ACCELERATE_CONFIG")
fi
model_args=(--model-config "${MODEL_CONFIG:-base}")
[[ -n "$INIT_FROM" ]] && model_args=(--init-from "$INIT_FROM")
[[ -n "$TOKENIZER" ]] && model_args+=(--tokenizer "$TOKENIZER")

"${launcher[@]}" "$(dirname "$0")/../trainers/pretrain.py" \
  --dataset "$CORPUS" \
  --dataset-config arxiv_structured \
  "${model_args[@]}" \
  --attention-window 256 \
  --max-seq-length 4096 \
  --per-device-batch-size 2 \
  --gradient-accumulation-steps 16 \
  --learning-rate 3e-5 \
  --warmup-steps 500 \
  --max-steps 6000 \
  --mixed-precision bf16 \
  --gradient-checkpointing \
  --eval-steps 500 \
  --save-steps 500 \
  --save-total-limit 3 \
  --seed 42 \
  --report-to tensorboard \
  --output-dir "$OUT" \
  --resume-from-checkpoint latest \
  "$@"
