#!/usr/bin/env python3
"""Checks that Hugging Face PEFT loads an adapter exported by `lorakit convert --to peft` and computes what the
reference data says: ../shared/testdata/reference/smollm2-lora-init.gguf (llama.cpp format) converted to PEFT, loaded with
PeftModel on transformers' model of the same GGUF, must give the reference loss of smollm2-lora-grads.gguf over the
64 reference tokens (which transformers + PEFT computed from the original adapter). That adapter barely moves the
loss, so with TEXT the script also scores TEXT with the adapter 50× stronger (lora_alpha × 50), chunks of 256, the
second half of each scored, as `lorakit perplexity -c 256 --lora-scaled ADAPTER.gguf 50` does; compare the two.

  python3 -m venv /tmp/refenv
  /tmp/refenv/bin/pip install torch "transformers==5.24.0" accelerate peft gguf numpy
  lorakit convert ../shared/testdata/reference/smollm2-lora-init.gguf /tmp/peft-export --to peft -m MODEL.gguf
  /tmp/refenv/bin/python scripts/check-peft.py MODEL.gguf /tmp/peft-export ../shared/testdata/reference [TEXT]
"""
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
from gguf import GGUFReader
from peft import PeftModel
from transformers import AutoModelForCausalLM


def main():
    model_path, adapter_dir, reference = os.path.abspath(sys.argv[1]), sys.argv[2], sys.argv[3]
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
                                                torch_dtype=torch.float32)
    ids = torch.tensor(np.array(GGUFReader(f"{reference}/smollm2-base-logits.gguf").get_tensor(0).data, dtype=np.int64))[None]
    grads = GGUFReader(f"{reference}/smollm2-lora-grads.gguf")
    field = grads.fields["reference.loss"]
    expected = float(field.parts[field.data[0]][0])
    with torch.no_grad():
        base_loss = base(ids, labels=ids).loss.item()
        model = PeftModel.from_pretrained(base, adapter_dir)
        model.eval()
        loss = model(ids, labels=ids).loss.item()
    print(f"base loss {base_loss:.7f}; with the exported adapter in PEFT {loss:.7f}; reference {expected:.7f}")
    assert abs(loss - expected) < 5e-5, "PEFT does not reproduce the reference loss with the exported adapter"
    print("ok: PEFT loads the export and reproduces the reference")
    if len(sys.argv) > 4:
        perplexity_with_stronger_adapter(model_path, adapter_dir, sys.argv[4], 50)


def perplexity_with_stronger_adapter(model_path, adapter_dir, text_path, multiplier, ctx=256):
    from transformers import AutoTokenizer
    stronger = tempfile.mkdtemp()
    shutil.copy(os.path.join(adapter_dir, "adapter_model.safetensors"), stronger)
    config = json.load(open(os.path.join(adapter_dir, "adapter_config.json")))
    config["lora_alpha"] = config["lora_alpha"] * multiplier
    json.dump(config, open(os.path.join(stronger, "adapter_config.json"), "w"))
    base = AutoModelForCausalLM.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path),
                                                torch_dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(model_path), gguf_file=os.path.basename(model_path))
    model = PeftModel.from_pretrained(base, stronger)
    model.eval()
    tokens = tokenizer(open(text_path).read(), add_special_tokens=False)["input_ids"]
    nll, count = 0.0, 0
    with torch.no_grad():
        for c in range(len(tokens) // ctx):
            chunk = torch.tensor(tokens[c * ctx:(c + 1) * ctx])[None]
            logits = model(chunk).logits[0].double()
            logp = torch.log_softmax(logits[ctx // 2:ctx - 1], dim=-1)
            nll -= logp.gather(1, chunk[0, ctx // 2 + 1:][:, None]).sum().item()
            count += ctx - 1 - ctx // 2
    print(f"PEFT, adapter × {multiplier}: {len(tokens) // ctx} chunks of {ctx}, PPL = {math.exp(nll / count):.4f}")


if __name__ == "__main__":
    main()
