#!/usr/bin/env python3
"""Tiny Phi-3 and Llama-3.2-style models converted by llama.cpp's own convert_hf_to_gguf.py, with transformers + PEFT
float64 references, for the layouts that have no small real file here:

  phi3        Phi-3-mini-style: fused qkv_proj and gate_up_proj, RoPE on whole heads, separate head
  phi3-long   Phi-4-mini-style: partial rotary (3/4 of each head), LongRoPE (long and short factors, attention
              factor), tied head, grouped-query attention
  llama32     Llama-3.2-style: `rope_scaling` llama3 (the converter writes `rope_freqs.weight`), tied head, GQA

Each model's weights are chosen so that the converter writes `formula_values` (scripts/make-tiny-references.py) for
every weight tensor, which the Swift tests recompute (TinyLlama.formulaValues): the Hugging Face checkpoint holds the
formula values with llama's Q/K rows un-permuted. The script checks that the converted file holds exactly those
tensors, and copies its metadata (and any tensor that is not a formula, such as `rope_freqs.weight`) into the
reference file, where the tests compare them with what TinyLlama writes.

  testdata/reference/tiny-<name>-reference.gguf
      converted.<key>              every metadata key of the converted file under the architecture's prefix
      converted.tensor_names       the converted file's tensor names, in order
      converted.<tensor>           the RoPE factor tensors (rope_freqs, rope_factors_long/short), copied
      input_ids [12]; logits [12, V] (transformers float64 on the checkpoint); logits_short [6, V] for the first six
      ids (phi3-long: within the original context, the short factors); reference.loss; reference.lora_loss;
      every LoRA gradient as in make-tiny-references.py (PEFT, rank 2, alpha 4, every linear module).

  /tmp/peftenv/bin/python scripts/make-converted-references.py LLAMA_CPP_DIR
(LLAMA_CPP_DIR: vendor/llama.cpp of the llama-cpp-python sdist, which holds convert_hf_to_gguf.py and gguf-py.)
"""
import importlib.util, json, os, subprocess, sys, tempfile
import numpy as np
import torch, gguf
from transformers import AutoModelForCausalLM, LlamaConfig, Phi3Config
from peft import LoraConfig, get_peft_model

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
spec = importlib.util.spec_from_file_location("tiny", os.path.join(root, "scripts", "make-tiny-references.py"))
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)
formula_values, init_value = tiny.formula_values, tiny.init_value
RANK, ALPHA, V, L = 2, 4, 80, 2

MODELS = {
    "phi3": Phi3Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=L, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=64, original_max_position_embeddings=64,
                       rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    "phi3-long": Phi3Config(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=L, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=32, original_max_position_embeddings=8,
                            partial_rotary_factor=0.75, rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1,
                            eos_token_id=2, pad_token_id=0,
                            rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 8,
                                             "partial_rotary_factor": 0.75,
                                             "long_factor": [float(x) for x in formula_values("rope_factors_long.weight", (6,)) * 3],
                                             "short_factor": [float(x) for x in formula_values("rope_factors_short.weight", (6,))]}),
    "llama32": LlamaConfig(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=L, num_attention_heads=4,
                           num_key_value_heads=2, max_position_embeddings=131072, rms_norm_eps=1e-5, tie_word_embeddings=True,
                           bos_token_id=1, eos_token_id=2,
                           rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 8192}),
}
PHI_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "qkv_proj": "attn_qkv", "o_proj": "attn_output",
              "gate_proj": "ffn_gate", "up_proj": "ffn_up", "gate_up_proj": "ffn_up", "down_proj": "ffn_down"}

# Converts with the vocabulary replaced by placeholder tokens (the tiny models have no tokenizer; the tests feed ids).
CONVERT = r"""
import sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + "/gguf-py")
import conversion.phi, conversion.llama
def set_vocab(self):
    n = self.hparams["vocab_size"]
    self.gguf_writer.add_tokenizer_model("gpt2"); self.gguf_writer.add_tokenizer_pre("default")
    self.gguf_writer.add_token_list([f"t{i}" for i in range(n)]); self.gguf_writer.add_token_types([1] * n)
    self.gguf_writer.add_token_merges([]); self.gguf_writer.add_bos_token_id(1); self.gguf_writer.add_eos_token_id(2)
conversion.phi.Phi3MiniModel.set_vocab = set_vocab
conversion.llama.LlamaModel.set_vocab = set_vocab
sys.argv = ["convert_hf_to_gguf.py", sys.argv[2], "--outfile", sys.argv[3], "--outtype", "f32"]
sys.path.insert(0, sys.argv[0])
import runpy
runpy.run_path(LLAMA + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def gguf_name(hf):
    """The GGUF tensor name of a Hugging Face parameter."""
    hf = hf.removeprefix("model.")
    fixed = {"embed_tokens.weight": "token_embd.weight", "norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, l, *rest = hf.split(".")
    sub = ".".join(rest)
    for module, name in [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")]:
        if sub == module + ".weight":
            return f"blk.{l}.{name}.weight"
    module = rest[1]
    return f"blk.{l}.{GGUF_NAMES[module]}.weight"


def unpermute(w, heads):
    """Hugging Face rows of a llama Q/K weight whose converted (permuted) rows are `w`."""
    d = w.shape[0] // heads
    return w.reshape(heads, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def build(name, config, directory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    llama = config.model_type == "llama"
    with torch.no_grad():
        for hf, p in model.named_parameters():
            g = gguf_name(hf)
            values = formula_values(g, tuple(p.shape))
            if llama and g.endswith(("attn_q.weight", "attn_k.weight")):
                heads = config.num_attention_heads if "attn_q" in g else config.num_key_value_heads
                values = unpermute(values, heads)
            p.copy_(torch.from_numpy(values))
    model.save_pretrained(directory)
    return model


def main(llama_cpp):
    rng = np.random.default_rng(11)
    out_dir = os.path.join(root, "testdata", "reference")
    for name, config in MODELS.items():
        scratch = tempfile.mkdtemp()
        build(name, config, scratch)
        converted = os.path.join(scratch, "converted.gguf")
        subprocess.run([sys.executable, "-c", "LLAMA = " + repr(llama_cpp) + "\n" + CONVERT, llama_cpp, scratch, converted],
                       check=True, capture_output=True)
        reader = gguf.GGUFReader(converted)
        arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        extra = {}
        for t in reader.tensors:
            shape = tuple(reversed([int(x) for x in t.shape]))
            data = np.asarray(t.data, dtype=np.float32).reshape(shape)
            if t.name.startswith("rope_"):  # frequency factors: copied into the reference
                extra[t.name] = data
                continue
            if not np.array_equal(data, formula_values(t.name, shape)):
                raise SystemExit(f"{name}: the converter wrote {t.name} {shape} differently from the formula")
        keys = {}
        for field in reader.fields.values():
            if field.name.startswith(arch + "."):
                value = field.parts[field.data[0]]
                keys[field.name] = float(value[0])

        model = AutoModelForCausalLM.from_pretrained(scratch, dtype=torch.float64).eval()
        ids = torch.tensor([[int(x) for x in rng.integers(3, V, 12)]])
        with torch.no_grad():
            logits = model(ids).logits[0]
            logits_short = model(ids[:, :6]).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:]).item()
        targets = PHI_TARGETS if arch == "phi3" else LLAMA_TARGETS
        peft_model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, lora_dropout=0.0))
        modules = {}
        for l in range(L):
            for t, module in enumerate(targets):
                part = "self_attn" if module in ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj") else "mlp"
                m = getattr(getattr(peft_model.base_model.model.model.layers[l], part), module)
                a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
                bv = init_value("B", l, t, tuple(b.shape))
                if arch == "llama" and module in ("q_proj", "k_proj"):  # the formula adapter is in GGUF row order
                    bv = unpermute(bv, config.num_attention_heads if module == "q_proj" else config.num_key_value_heads)
                with torch.no_grad():
                    a.copy_(torch.from_numpy(init_value("A", l, t, tuple(a.shape))).double())
                    b.copy_(torch.from_numpy(bv).double())
                modules[(l, module)] = m
        out = peft_model(ids, labels=ids)
        out.loss.backward()

        w = gguf.GGUFWriter(os.path.join(out_dir, f"tiny-{name}-reference.gguf"), arch)
        w.add_string("reference.description", f"transformers + PEFT (float64) on the tiny {name} checkpoint that "
                     "llama.cpp's convert_hf_to_gguf.py converted (scripts/make-converted-references.py)")
        for k, v in keys.items():
            w.add_float64("converted." + k, v)
        w.add_array("converted.tensor_names", [t.name for t in reader.tensors])
        for n, data in extra.items():
            w.add_tensor("converted." + n, data)
        w.add_tensor("logits", logits.float().numpy())
        w.add_tensor("logits_short", logits_short.float().numpy())
        grads = {}
        for (l, module), m in modules.items():
            base = f"blk.{l}.{GGUF_NAMES[module]}.weight"
            ga, gb = m.lora_A["default"].weight.grad.numpy(), m.lora_B["default"].weight.grad.numpy()
            if arch == "llama" and module in ("q_proj", "k_proj"):  # back to GGUF row order
                heads = config.num_attention_heads if module == "q_proj" else config.num_key_value_heads
                d = gb.shape[0] // heads
                gb = gb.reshape(heads, 2, d // 2, -1).swapaxes(1, 2).reshape(gb.shape)
            grads[base + ".lora_a.grad"] = ga.astype(np.float32)
            grads[base + ".lora_b.grad"] = gb.astype(np.float32)
        tiny.write_reference(w, loss, out.loss.item(), ids, grads)
        print(f"{name}: {len(reader.tensors)} tensors = formula; keys {keys}; loss {loss:.6f}, with LoRA {out.loss.item():.6f}")


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
