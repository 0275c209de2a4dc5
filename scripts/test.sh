#!/usr/bin/env bash
# Runs every test: installs what is missing, fetches the test models (SmolLM2, Qwen2.5, Gemma 3) and llama.cpp's extra tokenizer oracles when missing,
# builds once in release mode (the model tests run real forward/backward passes), and runs unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-model.sh all
scripts/fetch-vocab-oracles.sh
export LORAKIT_REQUIRE_MODEL=1
mkdir -p .build
FLAGS=$(scripts/swift-flags.sh)
swift build -c release --build-tests $FLAGS
swift test -c release --skip-build $FLAGS 2>&1 | tee .build/test.log || true
# How many tests ran, and which were skipped and why (only the 2023 finetune's files may be missing outside CI).
passed=$(grep -cE "^Test Case '.*' passed" .build/test.log || true)
failed=$(grep -cE "^Test Case '.*' failed" .build/test.log || true)
skipped=$(grep -cE "^Test Case '.*' skipped" .build/test.log || true)
summary() {
  if [ "$skipped" -gt 0 ]; then
    grep -E ": Test skipped - " .build/test.log | sed 's/.*: \([A-Za-z]*\.[A-Za-z]*\) : Test skipped - /skipped: \1: /' | sort -u
  fi
  echo "tests: $passed passed, $failed failed, $skipped skipped"
}
if [ "$failed" -gt 0 ] || [ "$passed" -eq 0 ] || ! grep -qE "Executed [0-9]+ tests?, with ([0-9]+ tests? skipped and )?0 failures" .build/test.log; then
  summary
  exit 1
fi
# Every parser under libFuzzer for a short while (scripts/fuzz.sh 1800 for the long runs RELIABILITY.md reports).
scripts/fuzz.sh "${LORAKIT_FUZZ_SECONDS:-30}"
summary
