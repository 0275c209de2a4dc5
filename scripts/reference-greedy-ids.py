#!/usr/bin/env python3
"""Greedy continuations from Hugging Face transformers' own llama implementation, in float32, on the very GGUF
file LoRAKit loads: the expected ids of LlamaTests/GenerationTests come from this script.

transformers' PyTorch backend needs torch (gigabytes, not installable here); its Flax llama (FlaxLlamaForCausalLM,
transformers 4.46, JAX on CPU) is the same architecture in another framework. transformers reads GGUF only into
PyTorch, so this script dequantizes the file with the `gguf` package and loads the weights itself, undoing
llama.cpp's row permutation of attn_q / attn_k as transformers does, and gives the Flax llama the file's RoPE
base (see use_rope_theta). Before generating it checks its logits
against testdata/reference/smollm2-base-logits.gguf (transformers + torch), so the transplant is proven.

  python3 -m venv /tmp/refenv
  /tmp/refenv/bin/pip install "transformers==4.46.3" "jax[cpu]" flax gguf numpy
  /tmp/refenv/bin/python scripts/reference-greedy-ids.py models/SmolLM2-135M-Instruct.Q4_1.gguf ../shared/testdata/reference

Prints, for each prompt (token ids), the first 16 greedy ids.
"""
import sys

import jax
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import FlaxLlamaForCausalLM, LlamaConfig
from transformers.models.llama import modeling_flax_llama

jax.config.update("jax_default_matmul_precision", "float32")

PROMPTS = {
    "The capital of France is": [504, 3575, 282, 4649, 314],
    "Once upon a time": [6403, 1980, 253, 655],
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n": None,  # ids from smollm2-tokens.json
}


def use_rope_theta(theta):
    # transformers 4.46's Flax llama builds its RoPE table with base 10000 whatever the config says (the PyTorch
    # llama reads rope_theta); SmolLM2 uses 100000. The same table with the config's base:
    def create_sinusoidal_positions(num_pos, dim):
        inv_freq = 1.0 / (theta ** (np.arange(0, dim, 2) / dim))
        freqs = np.einsum("i , j -> i j", np.arange(num_pos), inv_freq).astype("float32")
        emb = np.concatenate((freqs, freqs), axis=-1)
        out = np.concatenate((np.sin(emb)[:, None, :], np.cos(emb)[:, None, :]), axis=-1)
        return jax.numpy.array(out[:, :, :num_pos])
    modeling_flax_llama.create_sinusoidal_positions = create_sinusoidal_positions


def field(reader, key):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return value.tobytes().decode() if f.types[0].name == "STRING" else value[0].item()


def unpermute(w, heads):
    # llama.cpp stores Q/K rows so that RoPE rotates adjacent pairs; transformers rotates halves.
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def load(path):
    reader = GGUFReader(path)
    arch = field(reader, "general.architecture")
    g = lambda k: field(reader, f"{arch}.{k}")
    config = LlamaConfig(
        vocab_size=len(reader.fields["tokenizer.ggml.tokens"].data), hidden_size=g("embedding_length"),
        intermediate_size=g("feed_forward_length"), num_hidden_layers=g("block_count"),
        num_attention_heads=g("attention.head_count"), num_key_value_heads=g("attention.head_count_kv"),
        rms_norm_eps=g("attention.layer_norm_rms_epsilon"), rope_theta=g("rope.freq_base"),
        max_position_embeddings=g("context_length"), tie_word_embeddings=False)
    tensors = {t.name: dequantize(t.data, t.tensor_type).astype(np.float32).reshape([int(d) for d in reversed(t.shape)])
               for t in reader.tensors}
    H, KV = config.num_attention_heads, config.num_key_value_heads
    layers = {}
    for l in range(config.num_hidden_layers):
        t = lambda n: tensors[f"blk.{l}.{n}.weight"]
        layers[str(l)] = {
            "input_layernorm": {"weight": t("attn_norm")},
            "post_attention_layernorm": {"weight": t("ffn_norm")},
            "self_attn": {"q_proj": {"kernel": unpermute(t("attn_q"), H).T}, "k_proj": {"kernel": unpermute(t("attn_k"), KV).T},
                          "v_proj": {"kernel": t("attn_v").T}, "o_proj": {"kernel": t("attn_output").T}},
            "mlp": {"gate_proj": {"kernel": t("ffn_gate").T}, "up_proj": {"kernel": t("ffn_up").T},
                    "down_proj": {"kernel": t("ffn_down").T}},
        }
    embed = tensors["token_embd.weight"]
    head = tensors.get("output.weight", embed)
    params = {"model": {"embed_tokens": {"embedding": embed}, "layers": layers, "norm": {"weight": tensors["output_norm.weight"]}},
              "lm_head": {"kernel": head.T}}
    use_rope_theta(config.rope_theta)
    model = FlaxLlamaForCausalLM(config, _do_init=False, dtype=np.float32)
    return model, params


def main():
    model_path, reference_dir = sys.argv[1], sys.argv[2]
    model, params = load(model_path)

    ref = GGUFReader(f"{reference_dir}/smollm2-base-logits.gguf")
    rt = {t.name: t for t in ref.tensors}
    ids = np.array(rt["input_ids"].data, dtype=np.int32)[None, :]
    expected = np.array(rt["logits"].data, dtype=np.float32).reshape(ids.shape[1], -1)
    logits = np.asarray(model(ids, params=params).logits[0])
    err = float(np.abs(logits - expected).max())
    print(f"logits vs transformers+torch reference: max |diff| = {err:.2e}")
    assert err < 2e-4, "the transplanted weights do not reproduce the reference logits"

    import json
    tokens = json.load(open(f"{reference_dir}/smollm2-tokens.json"))
    for prompt, prompt_ids in PROMPTS.items():
        if prompt_ids is None:
            prompt_ids = next(c["ids_no_bos"] for c in tokens["cases"] if c["text"] == prompt)
        out = model.generate(np.array([prompt_ids], dtype=np.int32), params=params, max_new_tokens=16, do_sample=False,
                             pad_token_id=0, eos_token_id=None)
        new = [int(i) for i in np.asarray(out.sequences[0])[len(prompt_ids):]]
        print(f"{prompt!r} {prompt_ids} -> {new}")


if __name__ == "__main__":
    main()
