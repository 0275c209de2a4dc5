#!/usr/bin/env python3
"""Tiny random Qwen3, Gemma 2 and Gemma 3 models in llama.cpp's GGUF layout, with transformers + PEFT references, for the
architectures that have no small real file here. Each model is written the way llama.cpp's convert_hf_to_gguf.py
writes that family (tensor names, Hugging Face row order for Q/K, Gemma's norm weights stored as 1 + w), then
loaded back by transformers from the GGUF, so transformers (which undoes those conversions) judges the layout.

  the model (float32), written to a temporary folder: its weights follow `formula_values`, which the Swift tests
  recompute (TinyLlama.formulaValues) to write the same model themselves
  testdata/reference/tiny-<arch>-reference.gguf  input_ids [T]; logits [T, V]; reference.loss; reference.lora_loss;
                                                 every LoRA gradient blk.N.<target>.weight.lora_{a,b}.grad (with
                                                 grad_names and grad_norms as in make-arch-references.py) for the
                                                 adapter of scripts/make-arch-references.py's init_value (rank 2,
                                                 alpha 4, the seven linear weights)

Shapes follow each family's real config, shrunk: Qwen3's head size (128) is not embedding / heads; Gemma 2 keeps
head size 256 (its attention scale is 1/√256), alternating sliding-window layers (window 4 over 12 tokens) and
its soft caps (50, 30); Gemma 3 has six layers so that one is global (RoPE base 1e6) and five local
(window 4, base 10 000), with Q/K norms and no soft caps.

  /tmp/peftenv/bin/python scripts/make-tiny-references.py
"""
import importlib.util, os, tempfile
import numpy as np
import torch, gguf
from transformers import AutoModelForCausalLM
from peft import LoraConfig, get_peft_model

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
spec = importlib.util.spec_from_file_location("arch", os.path.join(root, "scripts", "make-arch-references.py"))
arch_refs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(arch_refs)
TARGETS, init_value = arch_refs.TARGETS, arch_refs.init_value
RANK, ALPHA = 2, 4
ARCHS = {
    "qwen3": dict(C=64, H=2, KV=1, d=128, F=96, V=80, L=2, window=None),
    "gemma2": dict(C=64, H=2, KV=1, d=256, F=96, V=80, L=2, window=4),
    # Six layers: five local (window 4, RoPE base 10 000) and one global (base 1e6), as Gemma 3 alternates them.
    "gemma3": dict(C=64, H=2, KV=1, d=256, F=96, V=80, L=6, window=4, rope_base=1e6),
}


def formula_values(name, shape):
    """v[k] = amplitude·sin(0.37·k + 0.0007·k² + 0.011·seed + 1), seed = Σ (i + 1)·byteᵢ of the name mod 1000; norms
    1 + 0.1·sin(…), matrices 1.7/√in·sin(…); `shape` is numpy's ([out, in] for matrices)."""
    seed = sum((i + 1) * b for i, b in enumerate(name.encode())) % 1000
    k = np.arange(int(np.prod(shape)), dtype=np.float64)
    s = np.sin(0.37 * k + 0.0007 * k * k + 0.011 * seed + 1)
    v = 1 + 0.1 * s if len(shape) == 1 else 1.7 / np.sqrt(shape[-1]) * s
    return v.astype(np.float32).reshape(shape)


def write_model(arch, c, path):
    C, H, KV, d, F, V, L = c["C"], c["H"], c["KV"], c["d"], c["F"], c["V"], c["L"]
    gemma = arch.startswith("gemma")
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"tiny-{arch}")
    w.add_block_count(L); w.add_context_length(256); w.add_embedding_length(C); w.add_feed_forward_length(F)
    w.add_head_count(H); w.add_head_count_kv(KV); w.add_key_length(d); w.add_value_length(d)
    w.add_layer_norm_rms_eps(1e-6); w.add_rope_freq_base(c.get("rope_base", 10000.0)); w.add_vocab_size(V)
    if gemma:
        w.add_sliding_window(c["window"])
    if arch == "gemma2":
        w.add_float32(f"{arch}.attn_logit_softcapping", 50.0)
        w.add_float32(f"{arch}.final_logit_softcapping", 30.0)
    # A byte-level tokenizer the loaders accept (the tests feed ids directly).
    tokens = [f"t{i}" for i in range(V)]
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("default"); w.add_token_list(tokens)
    w.add_token_types([1] * V); w.add_token_merges([]); w.add_bos_token_id(1); w.add_eos_token_id(2)

    def add(name, *shape):  # Gemma's norms are stored as 1 + w, as its converter writes them; the formula is that
        w.add_tensor(name, formula_values(name, shape))

    add("token_embd.weight", V, C)
    for l in range(L):
        p = f"blk.{l}."
        add(p + "attn_norm.weight", C)
        add(p + "attn_q.weight", H * d, C)
        add(p + "attn_k.weight", KV * d, C)
        add(p + "attn_v.weight", KV * d, C)
        add(p + "attn_output.weight", C, H * d)
        if arch in ("qwen3", "gemma3"):
            add(p + "attn_q_norm.weight", d)
            add(p + "attn_k_norm.weight", d)
        if gemma:
            add(p + "post_attention_norm.weight", C)
            add(p + "post_ffw_norm.weight", C)
        add(p + "ffn_norm.weight", C)
        add(p + "ffn_gate.weight", F, C)
        add(p + "ffn_up.weight", F, C)
        add(p + "ffn_down.weight", C, F)
    add("output_norm.weight", C)
    if not gemma:
        add("output.weight", V, C)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def write_reference(w, loss, lora_loss, ids, grads):
    """The losses, the ids and the LoRA gradients (with their names and norms) into the reference file `w`, then
    closes it."""
    w.add_float64("reference.loss", loss)
    w.add_float64("reference.lora_loss", lora_loss)
    w.add_uint32("reference.lora_rank", RANK)
    w.add_float32("reference.lora_alpha", ALPHA)
    w.add_tensor("input_ids", ids[0].numpy().astype(np.int32))
    w.add_array("reference.grad_names", list(grads))
    w.add_tensor("grad_norms", np.array([np.linalg.norm(g.astype(np.float64)) for g in grads.values()], dtype=np.float32))
    for n, g in grads.items():
        w.add_tensor(n, g)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


def main():
    rng = np.random.default_rng(7)
    out_dir = os.path.join(root, "testdata", "reference")
    scratch = tempfile.mkdtemp()
    for arch, c in ARCHS.items():
        write_model(arch, c, os.path.join(scratch, f"tiny-{arch}.gguf"))
        model = AutoModelForCausalLM.from_pretrained(scratch, gguf_file=f"tiny-{arch}.gguf", dtype=torch.float64).eval()
        ids = torch.tensor([[int(x) for x in rng.integers(3, c["V"], 12)]])
        with torch.no_grad():
            logits = model(ids).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
        peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
        modules = {}
        for l in range(c["L"]):
            for t, name in enumerate(TARGETS):
                part = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                m = getattr(getattr(peft_model.base_model.model.model.layers[l], part), name)
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                with torch.no_grad():
                    a.copy_(torch.from_numpy(init_value("A", l, t, tuple(a.shape))).double())
                    b.copy_(torch.from_numpy(init_value("B", l, t, tuple(b.shape))).double())
                modules[(l, name)] = m
        out = peft_model(ids, labels=ids)
        out.loss.backward()
        names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
        w = gguf.GGUFWriter(os.path.join(out_dir, f"tiny-{arch}-reference.gguf"), arch)
        w.add_string("reference.description", f"transformers + PEFT (float64) on the formula-weight tiny {arch} (scripts/make-tiny-references.py)")
        w.add_tensor("logits", logits.float().numpy())
        grads = {}
        for (l, name), m in modules.items():
            base = f"blk.{l}.{names[name]}.weight"
            grads[base + ".lora_a.grad"] = m.lora_A["default"].weight.grad.float().numpy()
            grads[base + ".lora_b.grad"] = m.lora_B["default"].weight.grad.float().numpy()
        write_reference(w, loss, out.loss.item(), ids, grads)
        print(f"{arch}: loss {loss:.6f}, with LoRA {out.loss.item():.6f}")


if __name__ == "__main__":
    main()
