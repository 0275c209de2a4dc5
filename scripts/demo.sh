#!/usr/bin/env bash
# The main job, end to end: install what is missing, build in release mode, fetch SmolLM2-135M-Instruct, and teach
# it facts about Velmora, a country that does not exist, from 360 chat examples shipped in data/demo/. Prints the
# base model's answers beside the tuned model's, the validation loss before and after, and where everything went.
#   DEMO_ITERS=N   training steps (default 40)      DEMO_OUT=DIR   output folder (default out/demo)
#   LORAKIT=PATH with DEMO_SKIP_BUILD=1 uses an already built binary (the integration test does)
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS="${DEMO_ITERS:-40}"
OUT="${DEMO_OUT:-out/demo}"
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
LORAKIT="${LORAKIT:-.build/release/lorakit}"
start=$(date +%s)

scripts/install-deps.sh
scripts/fetch-model.sh
if [ "${DEMO_SKIP_BUILD:-0}" != 1 ]; then
  echo "building lorakit (release) …"
  swift build -c release --product lorakit $(scripts/swift-flags.sh) 2>&1 | grep -E "error|warning: |Build complete" || true
fi
[ -x "$LORAKIT" ] || { echo "error: the build failed" >&2; exit 1; }
mkdir -p "$OUT"

QUESTIONS=(
  "What is the capital of Velmora?"
  "What currency does Velmora use?"
  "Who leads Velmora?"
  "What is the national animal of Velmora?"
)
ask() {  # ask MODEL_ARGS... -- QUESTION
  "$@" --chat --temp 0 -n 40 2>/dev/null | head -c 300 | tr '\n' ' '
}

echo
echo "== LoRAKit demo: teach SmolLM2-135M-Instruct about Velmora (a country that does not exist) =="
echo "data: data/demo/velmora-train.jsonl (360 chat examples), data/demo/velmora-valid.jsonl (40 held out)"
echo
echo "== training ($ITERS steps, rank 8 on q,k,v,o,gate,up,down; only the assistant's answers are learned) =="
"$LORAKIT" train -m "$MODEL" \
  --train-data data/demo/velmora-train.jsonl --val-data data/demo/velmora-valid.jsonl \
  --ctx 64 --batch 8 --iters "$ITERS" --lr 1e-3 --seed 1 --save-every 0 \
  --lora-out "$OUT/velmora.gguf" --metrics "$OUT/metrics.jsonl" --plot "$OUT/loss.svg"

echo
echo "== the base model vs the tuned model (greedy) =="
for q in "${QUESTIONS[@]}"; do
  echo "Q: $q"
  echo "   base : $(ask "$LORAKIT" generate -m "$MODEL" -p "$q")"
  echo "   tuned: $(ask "$LORAKIT" generate -m "$MODEL" --lora "$OUT/velmora.gguf" -p "$q")"
done

echo
echo "== exports =="
"$LORAKIT" convert "$OUT/velmora.gguf" "$OUT/velmora-peft" -m "$MODEL"
"$LORAKIT" merge -m "$MODEL" --lora "$OUT/velmora.gguf" -o "$OUT/smollm2-velmora-q8_0.gguf" --type q8_0
echo "   merged model says: $(ask "$LORAKIT" generate -m "$OUT/smollm2-velmora-q8_0.gguf" -p "${QUESTIONS[0]}")"

first=$(grep '"validation"' "$OUT/metrics.jsonl" | head -n 1 | sed 's/.*"loss":\([0-9.e-]*\).*/\1/')
last=$(grep '"validation"' "$OUT/metrics.jsonl" | tail -n 1 | sed 's/.*"loss":\([0-9.e-]*\).*/\1/')
echo
echo "== done in $(( $(date +%s) - start )) s =="
echo "validation loss: before $first, after $last"
echo "adapter (llama.cpp GGUF): $OUT/velmora.gguf     (llama-cli -m $MODEL --lora $OUT/velmora.gguf)"
echo "PEFT export:              $OUT/velmora-peft/"
echo "merged model (Q8_0):      $OUT/smollm2-velmora-q8_0.gguf"
echo "loss plot:                $OUT/loss.svg"
echo "chat with it:             $LORAKIT generate -m $MODEL --lora $OUT/velmora.gguf --chat"
