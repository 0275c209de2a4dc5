#!/usr/bin/env bash
# Which weights to adapt, and at what rank: trains one adapter per setting on SmolLM2-135M and Gemma 3 270M, on the
# demo's chat facts (data/demo, exact match of the answers to held-out questions) and WikiSQL (data/wikisql-*,
# exact match of the SQL), and prints docs/TUNING.md's table (held-out loss before → after, exact match,
# tokens/s, adapter size, peak memory, wall time) with the machine named.
#   scripts/study-targets.sh           the small version: the target sets at rank 8 and all linear weights at ranks 4
#                                      and 64, 15 steps per run, loss on 20 held-out rows, 10 questions (~45 minutes
#                                      on 2 cores)
#   scripts/study-targets.sh --full    every target set at ranks 4, 8, 16 and 64, 60 steps, 40 rows, 40 questions
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-model.sh >/dev/null
scripts/fetch-model.sh gemma3 >/dev/null
swift build -c release --product lorakit-bench $(scripts/swift-flags.sh) 2>&1 | tail -1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') [$(grep -o -wE 'avx512f|avx512_bf16|amx_bf16|avx2|fma' /proc/cpuinfo | sort -u | tr '\n' ' ')], $(nproc) cores"
if [ "${1:-}" = "--full" ]; then
  args=(--full --iterations 60 --questions 40 --validation-rows 40); settings=16
else
  args=(--iterations 15 --questions 10 --validation-rows 20); settings=6
fi
echo "| model | task | targets | rank | held-out loss (before → after) | exact match | tokens/s | adapter | peak memory | wall |"
echo "|---|---|---|---|---|---|---|---|---|---|"
# One process per run, so that each run's peak memory is its own.
for model in models/SmolLM2-135M-Instruct.Q4_1.gguf models/gemma-3-270m-q4_k_m.gguf; do
  for task in velmora wikisql; do
    for ((i = 0; i < settings; i++)); do
      .build/release/lorakit-bench study --models "$model" --tasks "$task" --only "$i" "${args[@]}"
    done
  done
done
