#!/usr/bin/env bash
# Puts llama.cpp's tokenizer test vocabularies (LLaMA SentencePiece, GPT-2, Phi-3, Falcon, DeepSeek-Coder, Llama 3,
# Qwen2, DeepSeek LLM, Command-R, MPT, Refact, StarCoder: each ggml-vocab-NAME.gguf with its .inp cases and .out
# expected ids) in models/vocab when they are missing, so that a clone of the repository tests against all of them. They ship in llama.cpp's sources, which the PyPI source package of
# llama-cpp-python vendors: download that archive from PyPI (pinned and checked by its sha256) and extract only them.
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES="llama-spm gpt-2 phi-3 falcon deepseek-coder llama-bpe qwen2 deepseek-llm command-r mpt refact starcoder"
DEST=models/vocab
missing=0
for n in $NAMES; do
    for ext in "" .inp .out; do [ -s "$DEST/ggml-vocab-$n.gguf$ext" ] || missing=1; done
done
if [ "$missing" = 0 ]; then
    echo "tokenizer oracles: $DEST (present)"
    exit 0
fi
mkdir -p "$DEST"
echo "fetching llama.cpp's tokenizer test vocabularies (llama-cpp-python 0.3.36 source package, PyPI) …"
python3 - "$DEST" $NAMES <<'PY'
import hashlib, io, os, re, ssl, sys, tarfile, time, urllib.request
dest, names = sys.argv[1], sys.argv[2:]
# The certificates pip is told to use (PIP_CERT), else the system's.
context = ssl.create_default_context(cafile=os.environ.get("PIP_CERT") or None)
opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
urllib.request.install_opener(opener)
version, sha256 = "0.3.36", "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
def fetch(url, timeout):
    for attempt in range(3):  # a network hiccup should not fail the test run
        try:
            return urllib.request.urlopen(url, timeout=timeout).read()
        except OSError as e:
            if attempt == 2:
                sys.exit("error: cannot download %s: %s" % (url, e))
            time.sleep(5 * (attempt + 1))
index = fetch("https://pypi.org/simple/llama-cpp-python/", 120).decode()
match = re.search(r'href="([^"#]*llama_cpp_python-%s\.tar\.gz)' % re.escape(version), index)
if not match:
    sys.exit("error: llama-cpp-python %s not found on PyPI" % version)
data = fetch(match.group(1), 600)
if hashlib.sha256(data).hexdigest() != sha256:
    sys.exit("error: llama-cpp-python %s archive has an unexpected sha256" % version)
wanted = {"ggml-vocab-%s.gguf%s" % (n, ext) for n in names for ext in ("", ".inp", ".out")}
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
    for member in archive:
        base = os.path.basename(member.name)
        if member.isfile() and base in wanted and "/vendor/llama.cpp/models/" in member.name:
            tmp = os.path.join(dest, base + ".tmp")
            with archive.extractfile(member) as src, open(tmp, "wb") as out:
                out.write(src.read())
            os.replace(tmp, os.path.join(dest, base))
            wanted.discard(base)
if wanted:
    sys.exit("error: not in the archive: " + ", ".join(sorted(wanted)))
PY
echo "tokenizer oracles: $DEST ($(ls "$DEST" | wc -l) files)"
