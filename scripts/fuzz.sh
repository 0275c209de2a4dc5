#!/usr/bin/env bash
# Fuzzes every parser a user's file reaches with libFuzzer (Swift's -sanitize=fuzzer,address):
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET…]      (default: 30 s each; targets gguf adapter peft jsonl tokenizer)
# Seed corpora are written by `lorakit-fuzz seeds`; what libFuzzer finds is kept in .build-fuzz/corpus/TARGET, and a
# crashing input is saved as .build-fuzz/crash-TARGET-* and makes the script fail (replay it with
# `.build/release/lorakit-fuzz TARGET FILE` and turn it into a test). Prints executions per target.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf adapter peft jsonl tokenizer)
export LORAKIT_SHARED=${LORAKIT_SHARED:-$PWD/../shared}
FLAGS=$(scripts/swift-flags.sh)
swift build -c release --product lorakit-fuzz --scratch-path .build-fuzz -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING $FLAGS 2>&1 \
  | grep -v "Cannot export local symbol" | grep -E "error|Compiling|Build" | tail -3
swift build -c release --product lorakit-fuzz $FLAGS 2>&1 | tail -1
seeds=.build-fuzz/seeds
rm -rf "$seeds"
.build/release/lorakit-fuzz seeds "$seeds"
status=0
for target in "${targets[@]}"; do
  corpus=.build-fuzz/corpus/$target
  mkdir -p "$corpus"
  log=.build-fuzz/fuzz-$target.log
  # ASan's leak checker reports the process's lifetime caches (tokenizers built once) as leaks: off; libFuzzer's own
  # -detect_leaks still checks that a single input leaks nothing.
  if ! LORAKIT_FUZZ_TARGET=$target ASAN_OPTIONS=detect_leaks=0 .build-fuzz/release/lorakit-fuzz "$corpus" "$seeds/$target" \
      -max_total_time="$seconds" -runs=1000000 -max_len=65536 -timeout=10 -rss_limit_mb=4096 \
      -artifact_prefix=".build-fuzz/crash-$target-" >"$log" 2>&1; then
    echo "fuzz $target: FAILED (see $log)"; tail -30 "$log"; status=1
  fi
  runs=$(grep -Eo "Done [0-9]+ runs in [0-9]+ second" "$log" | tail -1 || true)
  echo "fuzz $target: ${runs:-no summary} ($(ls "$corpus" | wc -l) corpus inputs)"
done
exit $status
