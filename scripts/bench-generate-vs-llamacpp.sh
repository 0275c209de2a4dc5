#!/usr/bin/env bash
# Generation and prompt speed beside llama.cpp's llama-bench on the same machine, alternating, with the CPU named:
#   LLAMA_BENCH=/path/to/llama-bench [PRECISION=fp32|bf16] scripts/bench-generate-vs-llamacpp.sh MODEL [THREADS] [ROUNDS]
# Each round runs `lorakit generate` (the first 1000 bytes of shakespeare.txt as the prompt, 64 greedy tokens) with
# --activations exact, then int8, then `llama-bench -p 0 -n 64 -d DEPTH` with DEPTH the prompt's token count, so both
# generate at the same depth of the cache, and `llama-bench -p DEPTH -n 0` for the prompt (ours is the exact run's,
# its batched products in PRECISION). llama-bench builds from the llama-cpp-python sdist (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; threads=${2:-1}; rounds=${3:-2}; precision=${PRECISION:-fp32}
llama_bench=${LLAMA_BENCH:?set LLAMA_BENCH to the path of llama-bench}
data=${LORAKIT_DATA:-../shared/data}
prompt=$(head -c 1000 "$data/shakespeare.txt")
swift build -c release --product lorakit $(scripts/swift-flags.sh) 2>&1 | tail -1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs) model $(grep -m1 -E '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs) [$(grep -m1 -o -wE 'avx2|avx512f|avx512_vnni|avx512_bf16|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')]"
# The cache depth: the prompt's token count as lorakit generate reports it.
depth=$(.build/release/lorakit generate -m "$model" -p "$prompt" -n 1 --temp 0 -t "$threads" 2>&1 >/dev/null \
  | grep -oE 'prompt: [0-9]+ tokens' | grep -oE '[0-9]+')
exact=(); int8=(); theirs=(); prompts=(); their_prompts=()
for round in $(seq "$rounds"); do
  for mode in exact int8; do
    report=$(.build/release/lorakit generate -m "$model" -p "$prompt" -n 64 --temp 0 -t "$threads" --activations "$mode" \
      --precision "$precision" 2>&1 >/dev/null)
    rate=$(echo "$report" | grep -oE 'generation: [0-9]+ tokens in [0-9.]+ s \([0-9.]+' | grep -oE '[0-9.]+$')
    if [ "$mode" = exact ]; then
      exact+=("$rate")
      prompts+=("$(echo "$report" | grep -oE 'prompt: [0-9]+ tokens in [0-9.]+ s \([0-9.]+' | grep -oE '[0-9.]+$')")
    else
      int8+=("$rate")
    fi
  done
  rate=$("$llama_bench" -m "$model" -p 0 -n 64 -d "$depth" -t "$threads" -r 1 2>/dev/null | grep 'tg64' | awk -F'|' '{print $(NF-1)}' | awk '{print $1}')
  theirs+=("$rate")
  prompt_rate=$("$llama_bench" -m "$model" -p "$depth" -n 0 -t "$threads" -r 1 2>/dev/null | grep "pp$depth" | awk -F'|' '{print $(NF-1)}' | awk '{print $1}')
  their_prompts+=("$prompt_rate")
  echo "round $round: generation exact ${exact[-1]}, int8 ${int8[-1]}, llama.cpp $rate tokens/s; prompt ($precision) ${prompts[-1]}, llama.cpp $prompt_rate tokens/s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
a=$(median "${exact[@]}"); b=$(median "${int8[@]}"); c=$(median "${theirs[@]}")
echo "median generation tokens/s, $threads thread(s), depth $depth: exact $a ($(awk -v a="$a" -v c="$c" 'BEGIN {printf "%.2f", a / c}')×), int8 $b ($(awk -v b="$b" -v c="$c" 'BEGIN {printf "%.2f", b / c}')×), llama.cpp $c"
p=$(median "${prompts[@]}"); q=$(median "${their_prompts[@]}")
echo "median prompt tokens/s, $threads thread(s), $depth tokens: $precision $p ($(awk -v p="$p" -v q="$q" 'BEGIN {printf "%.2f", p / q}')×), llama.cpp $q"
