#!/usr/bin/env python3
"""PEFT's LoRA training step on the workload of `lorakit-bench step`: SmolLM2 (the GGUF, dequantized to float32 by
transformers), LoRA r = 8, alpha = 16 on q, k, v, o, gate, up, down, BATCH × CTX random tokens, next-token loss,
AdamW. Prints seconds per step (median of the steps after the first two), tokens/s and peak RSS, with the CPU.

  python3 -m venv /tmp/peftenv && /tmp/peftenv/bin/pip install /opt/wheels/torch-*.whl transformers peft gguf
  /tmp/peftenv/bin/python scripts/bench-peft.py models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1 [--steps 8]
      [--batch 4] [--ctx 256] [--checkpointing] [--bf16]

scripts/bench-vs-peft.sh runs it and lorakit-bench alternately and prints the ratio.
"""
import argparse
import os
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def cpu():
    name, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "?":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [x for x in line.split(":", 1)[1].split() if x.startswith(("avx512", "amx", "avx2", "fma"))]
    return name, flags


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--bf16", action="store_true", help="torch.autocast(cpu, bfloat16) around forward and loss")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(3)
    path = os.path.abspath(a.model)
    model = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32)
    if a.checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    config = LoraConfig(r=a.rank, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([x for x in model.parameters() if x.requires_grad], lr=2e-4)
    ids = torch.randint(0, model.config.vocab_size, (a.batch, a.ctx))
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    measured = times[2:] if len(times) > 2 else times
    step = statistics.median(measured)
    name, flags = cpu()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"cpu: {name} [{' '.join(flags)}]")
    print(f"peft threads {a.threads}: {step:.2f} s/step, {a.batch * a.ctx / step:.0f} tokens/s, peak RSS {rss:.0f} MB"
          f"{', checkpointing' if a.checkpointing else ''}{', bf16 autocast' if a.bf16 else ''} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
