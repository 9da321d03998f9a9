#!/usr/bin/env bash
# The recorded small-scale replication (BENCHMARKS.md, "Structured versus plain at CPU scale"): the paper's two
# arms, 3 paired pre-training seeds, on the real papers in ../shared/data/latex, sized for 2 CPU cores (about 70 min on idle cores).
# Usage: bash bench/replication.sh [OUTPUT_DIR]   (default: /tmp/structformer-replication)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-/tmp/structformer-replication}"
structformer experiment \
  --output-dir "$out" --overwrite \
  --sources ../shared/data/latex \
  --num-proc 2 \
  --validation-fraction 0.3 \
  --vocab-size 4000 \
  --model-config bench/configs/replication-cpu.json \
  --max-seq-length 1024 \
  --document-chunks all \
  --per-device-batch-size 4 \
  --max-steps 3000 \
  --learning-rate 1e-3 \
  --seeds 1 2 3 \
  --probe-max-docs 8
