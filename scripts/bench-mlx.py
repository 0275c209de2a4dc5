#!/usr/bin/env python3
"""mlx-lm's LoRA training step on the workload of `lorakit-bench step`, on MLX's CPU backend: the GGUF dequantized to
float32 by transformers and handed to mlx-lm as a Hugging Face directory, LoRA r = 8 (scale 2 = alpha 16 / r) on
q, k, v, o, gate, up, down of every layer, BATCH × CTX random tokens, next-token loss over all of them, AdamW — the
step of mlx-lm's own trainer (`mlx_lm/tuner/trainer.py`: `nn.value_and_grad` of its `default_loss`, compiled with
the optimizer update). Prints seconds per step (median of the steps after the first two), tokens/s and peak RSS.

  python3 -m venv /tmp/mlxenv && /tmp/mlxenv/bin/pip install "mlx[cpu]" mlx-lm /opt/wheels/torch-*.whl gguf accelerate
  /tmp/mlxenv/bin/python scripts/bench-mlx.py models/SmolLM2-135M-Instruct.Q4_1.gguf --threads 1 [--steps 8]
      [--batch 4] [--ctx 256] [--rank 8] [--checkpointing]

The float32 Hugging Face copy of the model is cached beside it (MODEL.hf/). MLX's Linux CPU wheel (`mlx-cpu`) carries
the reference BLAS, where its float32 products run; `--blas PATH` loads another BLAS ahead of it (LD_PRELOAD: the
process then resolves `cblas_sgemm` there), e.g. Debian's OpenBLAS, with OPENBLAS_CORETYPE=SkylakeX on AVX-512 CPUs as
LoRAKit asks for. Threads: the BLAS reads its thread count from the environment at start, so this script sets it and
re-executes itself once. `AGAINST=mlx scripts/bench-vs-peft.sh` runs it and lorakit-bench alternately and prints the
ratio (MLX_BLAS=PATH passes --blas).
"""
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from bench_workload import cpu, workload_options

THREAD_VARIABLES = ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "MLX_NUM_THREADS"]


def hugging_face_copy(model):
    """MODEL.hf/: config.json and float32 safetensors written by transformers from the GGUF (once)."""
    path = os.path.abspath(model)
    out = path + ".hf"
    if not os.path.exists(os.path.join(out, "config.json")):
        import torch
        from transformers import AutoModelForCausalLM
        from safetensors.torch import save_file
        m = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                                 torch_dtype=torch.float32)
        # transformers will not save a model it read from GGUF; its float32 tensors and configuration will do.
        tied = m.config.tie_word_embeddings
        tensors = {k: v.contiguous() for k, v in m.state_dict().items() if not (tied and k == "lm_head.weight")}
        os.makedirs(out + ".partial", exist_ok=True)
        save_file(tensors, os.path.join(out + ".partial", "model.safetensors"), metadata={"format": "pt"})
        if hasattr(m.config, "quantization_config"):
            del m.config.quantization_config
        m.config.save_pretrained(out + ".partial")
        os.replace(out + ".partial", out)
    return out


def main():
    p = workload_options()
    p.add_argument("--blas", help="a BLAS library to load ahead of the wheel's reference BLAS")
    a = p.parse_args()
    preload = a.blas or ""
    if any(os.environ.get(v) != str(a.threads) for v in THREAD_VARIABLES) or os.environ.get("LD_PRELOAD", "") != preload:
        for v in THREAD_VARIABLES:
            os.environ[v] = str(a.threads)
        if preload:
            os.environ["LD_PRELOAD"] = preload
            with open("/proc/cpuinfo") as f:
                if " avx512f " in f.read(1 << 16) + " ":
                    os.environ.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
        os.execv(sys.executable, [sys.executable] + sys.argv)

    directory = hugging_face_copy(a.model)
    from functools import partial

    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx_lm.tuner.trainer import default_loss, grad_checkpoint
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model

    mx.set_default_device(mx.cpu)
    name, flags = cpu()
    print(f"cpu: {name} [{' '.join(flags)}]", flush=True)
    model, _ = load_model(Path(directory))
    model.freeze()
    keys = [f"{part}.{proj}" for part, projs in (("self_attn", "q_proj k_proj v_proj o_proj"),
                                                 ("mlp", "gate_proj up_proj down_proj")) for proj in projs.split()]
    linear_to_lora_layers(model, len(model.layers), {"rank": a.rank, "scale": 16.0 / a.rank, "dropout": 0.0,
                                                     "keys": keys})
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    if a.checkpointing:
        grad_checkpoint(model.layers[0])
    model.train()
    optimizer = optim.AdamW(learning_rate=2e-4)
    loss_value_and_grad = nn.value_and_grad(model, default_loss)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch, lengths):
        (loss, tokens), grad = loss_value_and_grad(model, batch, lengths)
        optimizer.update(model, grad)
        return loss, tokens

    mx.random.seed(3)
    # CTX + 1 tokens a row: the model reads CTX of them and predicts the next CTX, as the other benchmarks do.
    batch = mx.random.randint(0, model.args.vocab_size, (a.batch, a.ctx + 1))
    lengths = mx.array([[0, a.ctx]] * a.batch)
    times = []
    for _ in range(a.steps):
        start = time.perf_counter()
        loss, tokens = step(batch, lengths)
        mx.eval(state, loss, tokens)
        times.append(time.perf_counter() - start)
    measured = times[2:] if len(times) > 2 else times
    seconds = statistics.median(measured)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mlx threads {a.threads}: {seconds:.2f} s/step, {a.batch * a.ctx / seconds:.0f} tokens/s, peak RSS {rss:.0f} MB"
          f"{', checkpointing' if a.checkpointing else ''} (mlx {mx.__version__}, BLAS "
          f"{os.path.basename(a.blas) if a.blas else 'of the wheel'}, {trainable} trainable, loss {loss.item():.4f})")


if __name__ == "__main__":
    main()
