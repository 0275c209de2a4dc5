#!/usr/bin/env bash
# Which weights to adapt, and at what rank: trains one adapter per setting on the demo's chat facts (data/demo,
# exact match of the answers to held-out questions) and WikiSQL (../shared/data, exact match of the SQL), and prints
# docs/TUNING.md's table (held-out loss before → after, exact match, tokens/s, adapter size, peak memory, wall time)
# with the machine named. Every run: 15 steps, loss on 20 held-out rows, 10 questions answered greedily.
#   scripts/study-targets.sh           the small version: SmolLM2-135M, the four target sets at rank 8 and all
#                                      linear weights at ranks 4 and 64 (12 runs, ~13 minutes on 2 cores)
#   scripts/study-targets.sh --full    SmolLM2-135M and Gemma 3 270M, every target set at ranks 4, 8, 16 and 64
#                                      (64 runs, ~100 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
models=(models/SmolLM2-135M-Instruct.Q4_1.gguf)
args=(--iterations 15 --questions 10 --validation-rows 20 --wikisql-data "${LORAKIT_SHARED:-../shared}/data")
settings=6
if [ "${1:-}" = "--full" ]; then
  models+=(models/gemma-3-270m-q4_k_m.gguf); args+=(--full); settings=16
  scripts/fetch-model.sh gemma3 >/dev/null
fi
scripts/fetch-model.sh >/dev/null
swift build -c release --product lorakit-bench $(scripts/swift-flags.sh) 2>&1 | tail -1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') [$(grep -o -wE 'avx512f|avx512_bf16|amx_bf16|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')], $(nproc) cores"
echo "| model | task | targets | rank | held-out loss (before → after) | exact match | tokens/s | adapter | peak memory | wall |"
echo "|---|---|---|---|---|---|---|---|---|---|"
# One process per run, so that each run's peak memory is its own.
for model in "${models[@]}"; do
  for task in velmora wikisql; do
    for ((i = 0; i < settings; i++)); do
      .build/release/lorakit-bench study --models "$model" --tasks "$task" --only "$i" "${args[@]}"
    done
  done
done
