#!/usr/bin/env python3
"""Writes the compact forms of the transformers/PEFT references that the repository carries (testdata/reference),
from the full files (../shared/testdata/reference, described in its README):

  smollm2-base-logits-compact.gguf   input_ids [64]; per_position_loss [63]; logsumexp [64] and target_logit [63] of
                                     every row; logits_rows [4, 49152]: the full logits of rows 0, 21, 42 and 63
                                     (their indices in `rows`); reference.loss
  smollm2-lora-grads-compact.gguf    the gradients of every LoRA tensor of layers 0, 14 and 29 (same names as the full
                                     file); grad_norms [420]: the L2 norm of every gradient, in the order of the
                                     metadata array reference.grad_names; reference.loss

  python3 -m venv /tmp/g && /tmp/g/bin/pip install gguf numpy && /tmp/g/bin/python scripts/make-compact-references.py
"""
import os, sys
import numpy as np
import gguf

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
shared = os.environ.get("LORAKIT_SHARED", os.path.join(root, "..", "shared"))
src, dst = os.path.join(shared, "testdata", "reference"), os.path.join(root, "testdata", "reference")
os.makedirs(dst, exist_ok=True)

def tensors(path):
    r = gguf.GGUFReader(path)
    return r, {t.name: np.array(t.data) for t in r.tensors}

def field(r, key):
    f = r.fields[key]
    return f.parts[f.data[0]][0]

r, t = tensors(os.path.join(src, "smollm2-base-logits.gguf"))
ids, logits = t["input_ids"].astype(np.int32), t["logits"].astype(np.float64)
m = logits.max(axis=1, keepdims=True)
lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1))).astype(np.float32)
target = logits[np.arange(63), ids[1:]].astype(np.float32)
rows = np.array([0, 21, 42, 63], dtype=np.int32)
w = gguf.GGUFWriter(os.path.join(dst, "smollm2-base-logits-compact.gguf"), "llama")
w.add_string("reference.description", "compact form of smollm2-base-logits.gguf (scripts/make-compact-references.py)")
w.add_float64("reference.loss", float(field(r, "reference.loss")))
w.add_tensor("input_ids", ids)
w.add_tensor("per_position_loss", t["per_position_loss"].astype(np.float32))
w.add_tensor("logsumexp", lse)
w.add_tensor("target_logit", target)
w.add_tensor("rows", rows)
w.add_tensor("logits_rows", logits[rows].astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

r, t = tensors(os.path.join(src, "smollm2-lora-grads.gguf"))
names = [n for n in (x.name for x in r.tensors) if n.endswith(".grad")]
w = gguf.GGUFWriter(os.path.join(dst, "smollm2-lora-grads-compact.gguf"), "llama")
w.add_string("reference.description", "compact form of smollm2-lora-grads.gguf (scripts/make-compact-references.py)")
w.add_float32("reference.loss", float(field(r, "reference.loss")))
w.add_array("reference.grad_names", names)
w.add_tensor("grad_norms", np.array([np.linalg.norm(t[n].astype(np.float64)) for n in names], dtype=np.float32))
for n in names:
    if n.startswith(("blk.0.", "blk.14.", "blk.29.")):
        w.add_tensor(n, t[n].astype(np.float32))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
print("wrote", dst)
