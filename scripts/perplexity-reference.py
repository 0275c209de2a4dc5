#!/usr/bin/env python3
"""Perplexity of a GGUF model computed by transformers (float32, the GGUF dequantized by transformers) and scored as
llama.cpp's llama-perplexity scores: the text tokenized once (BOS first when the model adds it), cut into chunks of
CTX tokens, BOS written over each chunk's first token when the model adds BOS, and the second half of each chunk
scored (the token after each of positions CTX/2 … CTX-2).

  /tmp/peftenv/bin/python scripts/perplexity-reference.py models/gemma-3-270m-q4_k_m.gguf [TEXT] [CTX] [BYTES]
  (defaults: ../shared/data/shakespeare.txt, 256, its first 20 000 bytes)
With PEFT=DIR in the environment, the PEFT adapter in DIR is applied (e.g. one `lorakit convert --to peft` wrote).
"""
import math, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

path = sys.argv[1]
text_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.environ.get("LORAKIT_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "shared")), "data", "shakespeare.txt")
ctx = int(sys.argv[3]) if len(sys.argv) > 3 else 256
size = int(sys.argv[4]) if len(sys.argv) > 4 else 20000
directory, name = os.path.split(os.path.abspath(path))
tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()
if os.environ.get("PEFT"):
    from peft import PeftModel
    model = PeftModel.from_pretrained(model, os.environ["PEFT"]).eval()
text = open(text_path, "rb").read()[:size].decode("utf-8", errors="ignore")
ids = tok(text, add_special_tokens=True).input_ids
adds_bos = tok.bos_token_id is not None and len(ids) > 0 and ids[0] == tok.bos_token_id
nll, count = 0.0, 0
torch.set_num_threads(os.cpu_count())
for c in range(len(ids) // ctx):
    chunk = ids[c * ctx:(c + 1) * ctx]
    if adds_bos:
        chunk = [tok.bos_token_id] + chunk[1:]
    with torch.no_grad():
        logits = model(torch.tensor([chunk])).logits[0].double()
    first = ctx // 2
    logp = torch.log_softmax(logits[first:ctx - 1], dim=-1)
    targets = torch.tensor(chunk[first + 1:ctx])
    nll -= logp[torch.arange(len(targets)), targets].sum().item()
    count += len(targets)
    print(f"[{c + 1}]{math.exp(nll / count):.4f}", end=",", flush=True)
print(f"\nPPL = {math.exp(nll / count):.4f} over {count} scored tokens ({len(ids)} tokens, BOS {'added' if adds_bos else 'not added'})")
