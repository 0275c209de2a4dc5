#!/usr/bin/env bash
# The scale benchmark: random-weight models in the shapes of Llama 3.2 1B, Qwen2.5 1.5B and Llama 3.1 8B (written by
# `lorakit-bench make-model`), one training step per row (forward, backward, AdamW; rank 16 on the seven linear
# weights, batch 1), each row in its own process so that its peak RSS is its own, printed beside the memory plan.
#
#   scripts/bench-scale.sh [ROWS...]      ROW = shape:type:ctx:threads:checkpointing, e.g. llama-3.2-1b:q4_k:512:2:on
#   (no rows: the default table below; models are written to $SCALE_DIR, default /tmp/lorakit-scale, ~6 GB for all)
#   PEFT=/tmp/peftenv/bin/python scripts/bench-scale.sh ...   also runs PEFT on the same row after LoRAKit's
#   (scripts/bench-peft.py: transformers builds the shape with random float32 weights; 3 steps, the third timed),
#   in float32 and, with PEFT_BF16=1, with bf16 autocast too.
#   PRECISION=bf16 scripts/bench-scale.sh ...   LoRAKit's frozen products in bf16 (`--precision`, default fp32).
# Each row times one step after STEP_WARMUP untimed ones (default 1: the first step also reads the mapped file).
# The models carry SmolLM2's tokenizer padded to the shape's vocabulary (when models/ has it), so `lorakit train`
# runs on them too (`--dry-run`).
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE_DIR=${SCALE_DIR:-/tmp/lorakit-scale}
ROWS=("$@")
if [ ${#ROWS[@]} -eq 0 ]; then
    # BENCHMARKS.md's table (its 4096-token row was run with STEP_WARMUP=0, its 8B row with `lorakit train`).
    ROWS=(llama-3.2-1b:q4_k:512:2:off llama-3.2-1b:q4_k:512:1:off llama-3.2-1b:q4_k:512:2:on
          llama-3.2-1b:q8_0:512:2:off qwen2.5-1.5b:q4_k:512:2:off llama-3.2-1b:q4_k:4096:2:on
          llama-3.1-8b:q4_k:512:2:on)
fi
swift build -c release $(scripts/swift-flags.sh) --product lorakit-bench >&2
bench=.build/release/lorakit-bench
mkdir -p "$SCALE_DIR"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, flags: $(grep -m1 -o -w 'avx512[a-z_0-9]*\|avx2\|fma\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' ')"
for row in "${ROWS[@]}"; do
    IFS=: read -r shape type ctx threads checkpointing <<<"$row"
    model="$SCALE_DIR/$shape-$type.gguf"
    tokenizer=()
    [ -f models/SmolLM2-135M-Instruct.Q4_1.gguf ] && tokenizer=(--tokenizer-from models/SmolLM2-135M-Instruct.Q4_1.gguf)
    [ -f "$model" ] || "$bench" make-model --shape "$shape" --type "$type" -o "$model" "${tokenizer[@]}" >&2
    flag=""
    [ "$checkpointing" = on ] && flag=--checkpointing
    echo "== $shape $type, 1 × $ctx tokens, $threads threads, checkpointing $checkpointing"
    "$bench" step -m "$model" --batch 1 --ctx "$ctx" --rank 16 --threads "$threads" --steps 1 --warmup "${STEP_WARMUP:-1}" \
        --precision "${PRECISION:-fp32}" $flag | grep -v '^model '
    if [ -n "${PEFT:-}" ]; then
        for bf16 in "" ${PEFT_BF16:+--bf16}; do
            status=0
            out=$("$PEFT" scripts/bench-peft.py "$shape" --batch 1 --ctx "$ctx" --rank 16 --threads "$threads" --steps 3 \
                $flag $bf16 2>/dev/null) || status=$?
            echo "$out" | grep '^peft' || echo "peft${bf16:+ (bf16)}: exit status $status$([ $status = 137 ] && echo ', killed: out of memory')"
        done
    fi
done
