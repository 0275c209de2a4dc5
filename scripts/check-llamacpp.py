#!/usr/bin/env python3
"""Checks that today's llama.cpp loads a model (a merged one, say) and an adapter written by LoRAKit, and scores a
text as `lorakit perplexity [--lora]` does (llama-perplexity's definition: chunks of CTX tokens, the second half of
each scored, BOS written over each chunk's first token when the model adds BOS).

  pip install llama-cpp-python        # builds llama.cpp from source
  python3 scripts/check-llamacpp.py MODEL.gguf [ADAPTER.gguf|-] TEXT [CTX] [CHUNKS]
"""
import math, sys
import numpy as np
from llama_cpp import Llama

model, adapter, text_path = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = int(sys.argv[4]) if len(sys.argv) > 4 else 256
max_chunks = int(sys.argv[5]) if len(sys.argv) > 5 else 1 << 30
text = open(text_path, "rb").read()

def perplexity(lora):
    kw = {"lora_path": lora} if lora else {}
    llm = Llama(model_path=model, n_ctx=ctx, n_batch=ctx, logits_all=True, verbose=False, n_threads=2, **kw)
    tokens = llm.tokenize(text, add_bos=False, special=False)
    adds_bos = llm._model.add_bos_token()  # llama.cpp's own answer, metadata or the vocabulary's default
    chunks = min(len(tokens) // ctx, max_chunks)
    nll, count = 0.0, 0
    for c in range(chunks):
        chunk = tokens[c * ctx:(c + 1) * ctx]
        if adds_bos:
            chunk = [llm.token_bos()] + chunk[1:]
        llm.reset()
        llm.eval(chunk)
        logits = np.array(llm.scores[:ctx], dtype=np.float64)
        for i in range(ctx // 2, ctx - 1):
            row = logits[i]
            m = row.max()
            nll += m + math.log(np.exp(row - m).sum()) - row[chunk[i + 1]]
            count += 1
    return math.exp(nll / count), chunks, len(tokens)

base, chunks, n = perplexity(None)
print(f"llama.cpp (llama-cpp-python): {n} tokens, {chunks} chunks of {ctx}")
print(f"  {model:<20} PPL = {base:.4f}")
if adapter != "-":
    adapted, _, _ = perplexity(adapter)
    print(f"  with --lora {adapter}  PPL = {adapted:.4f}")
