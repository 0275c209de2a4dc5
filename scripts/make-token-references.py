#!/usr/bin/env python3
"""Token ids of llama.cpp's tokenizer test strings (the .inp files of its vocabulary oracles) for the real Qwen2.5
and Gemma 3 files, by llama.cpp's llama-tokenize (built from the llama-cpp-python sdist) and by transformers'
tokenizer built from the same GGUF. Writes testdata/reference/<name>-tokens.json:
{"texts": [...], "llama.cpp": [[ids]...], "transformers": [[ids]...]} (ids without BOS).

  LLAMA_TOKENIZE=/path/to/llama-tokenize /tmp/peftenv/bin/python scripts/make-token-references.py
"""
import json, os, subprocess, sys
from transformers import AutoTokenizer

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
shared = os.environ.get("LORAKIT_SHARED", os.path.join(root, "..", "shared"))
tool = os.environ["LLAMA_TOKENIZE"]
texts = []
for name in ["llama-bpe", "phi-3"]:
    for base in [os.path.join(shared, "testdata", "vocab"), os.path.join(root, "models", "vocab")]:
        path = os.path.join(base, f"ggml-vocab-{name}.gguf.inp")
        if os.path.exists(path):
            texts += open(path, encoding="utf-8").read().split("\n__ggml_vocab_test__\n")
            break
texts = [t for t in dict.fromkeys(texts) if t.strip("\n")][:60]
for name, file in [("qwen2.5", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), ("gemma3", "gemma-3-270m-q4_k_m.gguf")]:
    model = os.path.join(root, "models", file)
    tok = AutoTokenizer.from_pretrained(os.path.join(root, "models"), gguf_file=file)
    ours, theirs = [], []
    for t in texts:
        out = subprocess.run([tool, "-m", model, "-p", t, "--ids", "--no-bos", "--log-disable", "--no-parse-special"],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        ours.append(json.loads(out))
        theirs.append(tok(t, add_special_tokens=False).input_ids)
    agree = sum(a == b for a, b in zip(ours, theirs))
    json.dump({"texts": texts, "llama.cpp": ours, "transformers": theirs},
              open(os.path.join(root, "testdata", "reference", f"{name}-tokens.json"), "w"), ensure_ascii=False)
    print(f"{name}: {len(texts)} texts, llama.cpp and transformers agree on {agree}")
