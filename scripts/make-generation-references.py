#!/usr/bin/env python3
"""Greedy generation and chat rendering by transformers on the real Qwen2.5 and Gemma 3 files (loaded from the
GGUF, float32). Writes testdata/reference/<name>-generation.json:
  {"generation": [{"prompt_ids": [...], "ids": [16 greedy ids]}...],
   "chat": [{"messages": [...], "add_generation_prompt": bool, "text": apply_chat_template(...)}...]}
Gemma 3 270M is a base model without a chat template; its chats are rendered with the template of Google's
instruction-tuned Gemma 3 models (testdata/reference/gemma3-chat-template.jinja), which the JSON then carries as
"template".

  /tmp/peftenv/bin/python scripts/make-generation-references.py [--chat-only]   (--chat-only: keep "generation")
"""
import json, os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of Velmora?"}], True),
    ([{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello!"}], False),
    ([{"role": "user", "content": "One"}, {"role": "assistant", "content": "Two"}, {"role": "user", "content": "Three"}], True),
    ([{"role": "system", "content": "  Be terse.\n"}, {"role": "user", "content": "\n Name a colour. "},
      {"role": "assistant", "content": " Teal\n\n"}, {"role": "user", "content": "Another?"}], True),
]
PROMPTS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "def fibonacci(n):", "The capital of France is"]
for name, file in [("qwen2.5", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"), ("gemma3", "gemma-3-270m-q4_k_m.gguf")]:
    directory = os.path.join(root, "models")
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=file)
    path = os.path.join(root, "testdata", "reference", f"{name}-generation.json")
    out = {"generation": [], "chat": []}
    if not tok.chat_template:
        tok.chat_template = open(os.path.join(root, "testdata", "reference", f"{name}-chat-template.jinja")).read()
        out["template"] = tok.chat_template
    if "--chat-only" in sys.argv:
        out["generation"] = json.load(open(path))["generation"]
        PROMPTS = []
    else:
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=file, dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            generated = model.generate(ids, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(ids))
        out["generation"].append({"prompt": prompt, "prompt_ids": ids[0].tolist(), "ids": generated[0, ids.shape[1]:].tolist()})
    for messages, prompt in CONVERSATIONS:
        out["chat"].append({"messages": messages, "add_generation_prompt": prompt,
                            "text": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)})
    json.dump(out, open(path, "w"), ensure_ascii=False, indent=1)
    print(name, [g["ids"][:6] for g in out["generation"]], len(out["chat"]), "chats")
