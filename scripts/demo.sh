#!/usr/bin/env bash
# The main job, end to end on a fresh machine: install what is missing, build in release mode, fetch
# SmolLM2-135M-Instruct, and run LoRAKit on it. Each stage that the project has built runs here.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-model.sh
echo "building lorakit (release) …"
swift build -c release --product lorakit 2>&1 | grep -E "error|warning: |Compiling|Build complete" | grep -v "^\[" || true
LORAKIT=.build/release/lorakit
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
echo
echo "== the model =="
"$LORAKIT" info "$MODEL"
