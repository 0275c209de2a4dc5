#!/usr/bin/env python3
"""PEFT's LoRA training step on the workload of `lorakit-bench step`: SmolLM2 (the GGUF, dequantized to float32 by
transformers), LoRA r = 8, alpha = 16 on q, k, v, o, gate, up, down, BATCH × CTX random tokens, next-token loss,
AdamW. Prints seconds per step (median of the steps after the first two), tokens/s and peak RSS, with the CPU.

  python3 -m venv /tmp/peftenv && /tmp/peftenv/bin/pip install /opt/wheels/torch-*.whl transformers peft gguf
  /tmp/peftenv/bin/python scripts/bench-peft.py models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1 [--steps 8]
      [--batch 4] [--ctx 256] [--rank 8] [--checkpointing] [--bf16]

MODEL may instead be one of the scale benchmark's shapes (llama-3.2-1b, qwen2.5-1.5b, llama-3.1-8b): transformers
builds that model from its configuration with random float32 weights, as `lorakit-bench make-model` does for LoRAKit.
A model that does not fit in memory prints the failure (`peft ... failed: ...`) and exits 3.

scripts/bench-vs-peft.sh runs it and lorakit-bench alternately and prints the ratio.
"""
import os
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from bench_workload import cpu, workload_options


# The shapes of scripts/bench-scale.sh (Sources/lorakit-bench/ScaleModels.swift), as transformers configurations.
SHAPES = {
    "llama-3.2-1b": ("llama", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                                   rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5)),
    "qwen2.5-1.5b": ("qwen2", dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                   num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                                   rope_theta=1000000.0, max_position_embeddings=131072, rms_norm_eps=1e-6)),
    "llama-3.1-8b": ("llama", dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                   num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
                                   rope_theta=500000.0, max_position_embeddings=131072, rms_norm_eps=1e-5)),
}


def load(model):
    if model in SHAPES:
        from transformers import AutoConfig
        kind, values = SHAPES[model]
        config = AutoConfig.for_model(kind, **values)
        return AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    path = os.path.abspath(model)
    return AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path), torch_dtype=torch.float32)


def main():
    p = workload_options()
    p.add_argument("--bf16", action="store_true", help="torch.autocast(cpu, bfloat16) around forward and loss")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(3)
    name, flags = cpu()
    print(f"cpu: {name} [{' '.join(flags)}]", flush=True)
    try:
        model = load(a.model)
    except (RuntimeError, MemoryError) as e:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peft threads {a.threads}: {a.model} failed while building the float32 model: {str(e).splitlines()[0]} "
              f"(peak RSS {rss:.0f} MB)")
        raise SystemExit(3)
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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peft threads {a.threads}: {step:.2f} s/step, {a.batch * a.ctx / step:.0f} tokens/s, peak RSS {rss:.0f} MB"
          f"{', checkpointing' if a.checkpointing else ''}{', bf16 autocast' if a.bf16 else ''} (torch {torch.__version__})")


if __name__ == "__main__":
    main()
