#!/usr/bin/env python3
"""Greedy continuations from Hugging Face transformers (PyTorch, float32, CPU) on the very GGUF file LoRAKit
loads: the expected ids of LlamaTests/GenerationTests come from this script. The same versions as
testdata/reference (transformers 5.24, torch 2.13 CPU):

  python3 -m venv /tmp/refenv
  /tmp/refenv/bin/pip install torch "transformers==5.24.0" accelerate gguf numpy
  /tmp/refenv/bin/python scripts/reference-greedy-ids.py models/SmolLM2-135M-Instruct.Q4_1.gguf

Prints, for each prompt (token ids), the first 16 greedy ids.
"""
import os
import sys

import torch
from transformers import AutoModelForCausalLM

PROMPTS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "Once upon a time": [6403, 1980, 253, 655],
    # ids of this text in ../shared/testdata/reference/smollm2-tokens.json
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n": [1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198],
}


def main():
    path = os.path.abspath(sys.argv[1])
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
    model.eval()
    print(f"transformers {__import__('transformers').__version__}, torch {torch.__version__}")
    for prompt, ids in PROMPTS.items():
        out = model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)
        print(f"{prompt!r} {ids} -> {out[0, len(ids):].tolist()}")


if __name__ == "__main__":
    main()
