#!/usr/bin/env bash
# LoRAKit's training step against PEFT's on the same machine, alternating, with the CPU named:
#   scripts/bench-vs-peft.sh [THREADS] [ROUNDS] [PYTHON] [MODEL]
#   CHECKPOINTING=1 scripts/bench-vs-peft.sh …   (gradient checkpointing on both sides)
#   PRECISION=bf16 scripts/bench-vs-peft.sh …     (lorakit --precision bf16 against PEFT under bf16 autocast)
#   PRECISION=bf16 PEFT_PRECISION=fp32 …           (each side's precision apart: lorakit bf16 against PEFT float32)
#   AGAINST=mlx scripts/bench-vs-peft.sh [THREADS] [ROUNDS] [PYTHON] [MODEL]
#                                                   (mlx-lm's LoRA step on MLX's CPU backend instead of PEFT,
#                                                   scripts/bench-mlx.py; PYTHON defaults to /tmp/mlxenv/bin/python;
#                                                   MLX_BLAS=PATH: that BLAS instead of the wheel's reference one)
#   PAUSE=S scripts/bench-vs-peft.sh …            (S seconds idle before each run, default 30: a run started right
#                                                   after the other side's was measured 3-5 % slower than one
#                                                   started on a settled machine; the pause treats both sides alike)
#   (defaults: 1, 2, /tmp/peftenv/bin/python, models/SmolLM2-135M-Instruct.Q4_1.gguf; scripts/fetch-model.sh all
#   fetches Qwen2.5-Coder-0.5B and Gemma 3 270M too)
# Both run the model on 4 × 256 random tokens, LoRA r = 8 on the seven linear weights (lorakit-bench step and
# scripts/bench-peft.py); the ratio is of the median tokens/s over the rounds. PEFT needs torch, transformers, peft
# and gguf in PYTHON (see scripts/bench-peft.py).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-1}
rounds=${2:-2}
against=${AGAINST:-peft}
case "$against" in
  peft) script=scripts/bench-peft.py; python=${3:-/tmp/peftenv/bin/python} ;;
  mlx) script=scripts/bench-mlx.py; python=${3:-/tmp/mlxenv/bin/python} ;;
  *) echo "AGAINST must be peft or mlx, not $against" >&2; exit 2 ;;
esac
model=${4:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
checkpointing=()
[ "${CHECKPOINTING:-0}" = 1 ] && checkpointing=(--checkpointing)
precision=${PRECISION:-fp32}
ours_precision=(--precision "$precision"); theirs_options=()
[ "$against" = mlx ] && [ -n "${MLX_BLAS:-}" ] && theirs_options=(--blas "$MLX_BLAS")
peft_precision=${PEFT_PRECISION:-$precision}
[ "$peft_precision" = bf16 ] && theirs_options=(--bf16)
[ "$against" = mlx ] && [ "$peft_precision" != fp32 ] && { echo "AGAINST=mlx measures float32 only" >&2; exit 2; }
[ -s "$model" ] || scripts/fetch-model.sh >/dev/null
swift build -c release --product lorakit-bench $(scripts/swift-flags.sh) 2>&1 | tail -1
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') [$(grep -m1 -o -wE 'avx512f|avx512_bf16|amx_bf16|avx2' /proc/cpuinfo | sort -u | tr '\n' ' ')]"
pause=${PAUSE:-30}
echo "pause before each run: ${pause} s"
ours=(); theirs=()
for round in $(seq "$rounds"); do
  sleep "$pause"
  line=$(.build/release/lorakit-bench step --model "$model" --threads "$threads" --steps 4 "${checkpointing[@]}" "${ours_precision[@]}" | grep "^threads")
  echo "round $round lorakit: $line"
  ours+=("$(echo "$line" | grep -oE '[0-9]+ tokens/s' | cut -d' ' -f1)")
  sleep "$pause"
  line=$("$python" "$script" "$model" --threads "$threads" --steps 6 "${checkpointing[@]}" "${theirs_options[@]}" 2>/dev/null | grep "^$against")
  echo "round $round $against:    $line"
  theirs+=("$(echo "$line" | grep -oE '[0-9]+ tokens/s' | cut -d' ' -f1)")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2)}'; }
a=$(median "${ours[@]}"); b=$(median "${theirs[@]}")
echo "median tokens/s with $threads thread(s)${checkpointing:+, checkpointing}, lorakit $precision $a, $against $peft_precision $b, ratio $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')×"
