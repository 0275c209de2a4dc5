#!/usr/bin/env bash
# Runs every test: installs what is missing, fetches SmolLM2 and llama.cpp's extra tokenizer oracles when missing,
# builds once in release mode (the model tests run real forward/backward passes), and runs unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/fetch-model.sh
scripts/fetch-vocab-oracles.sh
export LORAKIT_REQUIRE_MODEL=1
mkdir -p .build
FLAGS=$(scripts/swift-flags.sh)
swift build -c release --build-tests $FLAGS
swift test -c release --skip-build $FLAGS 2>&1 | tee .build/test.log
grep -q "with 0 failures" .build/test.log
