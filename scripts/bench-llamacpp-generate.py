#!/usr/bin/env python3
"""Prompt and generation speed of llama.cpp (through llama-cpp-python) for comparison with `lorakit generate`.

  python3 scripts/bench-llamacpp-generate.py MODEL.gguf PROMPT_FILE N_PREDICT THREADS
"""
import sys, time
from llama_cpp import Llama

model, prompt_file, n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompt = open(prompt_file).read()
llm = Llama(model_path=model, n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = llm.tokenize(prompt.encode(), add_bos=False)
t0 = time.time(); llm.eval(tokens); t1 = time.time()
out = []
for _ in range(n):
    tok = int(llm.scores[llm.n_tokens - 1].argmax())
    out.append(tok)
    llm.eval([tok])
t2 = time.time()
print(f"llama.cpp: prompt {len(tokens)} tokens in {t1 - t0:.2f} s ({len(tokens) / (t1 - t0):.1f} tokens/s); "
      f"generation {n} tokens in {t2 - t1:.2f} s ({n / (t2 - t1):.1f} tokens/s), {threads} threads")
