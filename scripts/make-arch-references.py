#!/usr/bin/env python3
"""Reference logits, loss and LoRA gradients computed by Hugging Face transformers + PEFT on the real models of
the other architectures (Qwen2.5-Coder-0.5B-Instruct: qwen2; Gemma 3 270M: gemma3), loaded by transformers from the
same GGUF files lorakit reads (transformers dequantizes them to float32 and undoes llama.cpp's conversions, so it
is the judge of how each tensor is laid out). Writes testdata/reference/<name>-compact.gguf:

  input_ids [T]               the tokenizer's ids (transformers' tokenizer built from the GGUF) of the text below
  logsumexp [T], target_logit [T-1]   of every logits row; logits_rows [2, V] the full rows `rows` (first and last)
  grad_norms [G]              the L2 norm of every LoRA gradient, in the order of reference.grad_names
  blk.{0,L-1}.*.lora_{a,b}.grad       the whole gradients of the first and last layers
  reference.loss, reference.lora_loss  mean next-token loss without and with the adapter
  reference.lora_rank, reference.lora_alpha

The LoRA adapter (rank 4, alpha 8, all seven linear weights of every layer) is not stored: every value follows
`init_value` below, which the Swift tests recompute, so gradients are compared for the same adapter.

  scripts/fetch-model.sh all
  python3 -m venv /tmp/peftenv && /tmp/peftenv/bin/pip install /opt/wheels/torch-*.whl transformers peft gguf sentencepiece
  /tmp/peftenv/bin/python scripts/make-arch-references.py [--float64] [qwen2.5|gemma3 …]

--float64 runs transformers and PEFT in float64 (the float32 weights transformers dequantized, widened), so that the
reference carries no float32 rounding of its own: Gemma 3's is made so (a float32 reference put one of its gradients
1.0004e-3 away from ours, at the edge of the 1e-3 bar); Qwen2.5's is float32. Gemma's RMSNorm casts its input to
float32 whatever the model's type, so in float64 it is replaced by the same formula in the input's type (RoPE
angles and the eager attention's softmax stay float32 in transformers).
"""
import math, os, sys
import numpy as np
import torch, gguf
from transformers import AutoModelForCausalLM, AutoTokenizer
from peft import LoraConfig, get_peft_model

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
shared = os.environ.get("LORAKIT_SHARED", os.path.join(root, "..", "shared"))
MODELS = {
    "qwen2.5": ("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", "qwen2"),
    "gemma3": ("gemma-3-270m-q4_k_m.gguf", "gemma3"),
}
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA, TOKENS = 4, 8, 48


def init_value(kind, layer, target, shape):
    """The adapter's values: 0.02·sin(1 + 0.7·i + 0.013·j + 0.3·layer + 1.1·target + (0.5 for B)), [i, j] of A [r, in]
    or B [out, r], target in the order of TARGETS."""
    i = np.arange(shape[0], dtype=np.float64)[:, None]
    j = np.arange(shape[1], dtype=np.float64)[None, :]
    phase = 1 + 0.7 * i + 0.013 * j + 0.3 * layer + 1.1 * target + (0.5 if kind == "B" else 0)
    return (0.02 * np.sin(phase)).astype(np.float32)


def widen_gemma_norms():
    """Gemma3RMSNorm.forward computes in float32 (x.float(), weight.float()) even in a float64 model."""
    from transformers.models.gemma3 import modeling_gemma3

    def forward(self, x):
        return self._norm(x) * (1.0 + self.weight)
    modeling_gemma3.Gemma3RMSNorm.forward = forward


def main(names, dtype):
    if dtype == torch.float64:
        widen_gemma_norms()
    text = open(os.path.join(shared, "data", "shakespeare.txt"), encoding="utf-8").read()[:600]
    torch.manual_seed(0)
    for name in names:
        file, arch = MODELS[name]
        path = os.path.join(root, "models")
        tok = AutoTokenizer.from_pretrained(path, gguf_file=file)
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=file, torch_dtype=torch.float32).to(dtype)
        model.eval()
        ids = tok(text, return_tensors="pt").input_ids[:, :TOKENS]
        T = ids.shape[1]
        with torch.no_grad():
            logits = model(ids).logits[0].double()
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
        lse = torch.logsumexp(logits, dim=1).float().numpy()
        target = logits[torch.arange(T - 1), ids[0, 1:]].float().numpy()
        rows = np.array([0, T - 1], dtype=np.int32)

        config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0, bias="none")
        peft_model = get_peft_model(model, config).to(dtype)
        layers = model.config.num_hidden_layers
        for l in range(layers):
            for t, module_name in enumerate(TARGETS):
                part = "self_attn" if module_name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
                module = getattr(getattr(peft_model.base_model.model.model.layers[l], part), module_name)
                a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
                with torch.no_grad():
                    a.copy_(torch.from_numpy(init_value("A", l, t, tuple(a.shape))).to(dtype))
                    b.copy_(torch.from_numpy(init_value("B", l, t, tuple(b.shape))).to(dtype))
        out = peft_model(ids, labels=ids)
        out.loss.backward()
        lora_loss = out.loss.item()

        gguf_names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                      "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
        grads = {}
        for l in range(layers):
            for module_name in TARGETS:
                part = "self_attn" if module_name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                module = getattr(getattr(peft_model.base_model.model.model.layers[l], part), module_name)
                base = f"blk.{l}.{gguf_names[module_name]}.weight"
                grads[base + ".lora_a.grad"] = module.lora_A["default"].weight.grad.float().numpy()
                grads[base + ".lora_b.grad"] = module.lora_B["default"].weight.grad.float().numpy()

        dst = os.path.join(root, "testdata", "reference", f"{name}-compact.gguf")
        w = gguf.GGUFWriter(dst, arch)
        w.add_string("reference.description", f"transformers + PEFT in {str(dtype).split('.')[-1]} on models/{file} (scripts/make-arch-references.py)")
        w.add_float64("reference.loss", loss)
        w.add_float64("reference.lora_loss", lora_loss)
        w.add_uint32("reference.lora_rank", RANK)
        w.add_float32("reference.lora_alpha", ALPHA)
        w.add_array("reference.grad_names", list(grads))
        w.add_tensor("input_ids", ids[0].numpy().astype(np.int32))
        w.add_tensor("logsumexp", lse)
        w.add_tensor("target_logit", target)
        w.add_tensor("rows", rows)
        w.add_tensor("logits_rows", logits[rows].float().numpy())
        w.add_tensor("grad_norms", np.array([np.linalg.norm(g.astype(np.float64)) for g in grads.values()], dtype=np.float32))
        for n, g in grads.items():
            if n.startswith((f"blk.0.", f"blk.{layers - 1}.")):
                w.add_tensor(n, g)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
        print(f"{name}: {T} tokens, loss {loss:.6f}, with LoRA {lora_loss:.6f} -> {dst}")


if __name__ == "__main__":
    wide = "--float64" in sys.argv
    main([a for a in sys.argv[1:] if a != "--float64"] or list(MODELS), torch.float64 if wide else torch.float32)
