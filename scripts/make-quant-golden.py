#!/usr/bin/env python3
"""Writes Tests/GGUFTests/Fixtures/quant-golden.bin: golden vectors from the `gguf` package's numpy
ports of llama.cpp's quantizers and dequantizers, which the Swift tests compare against bit for bit.

  pip install gguf numpy && python3 scripts/make-quant-golden.py

Tensors (raw bytes are stored as I8 tensors):
  quantize.input            F32   values fed to every quantizer (includes zero, constant and tie blocks)
  quantize.<TYPE>           I8    gguf.quants.quantize(input, TYPE) bytes
  dequantize.<TYPE>.blocks  I8    random blocks with sane scale fields
  dequantize.<TYPE>.values  F32   gguf.quants.dequantize(blocks, TYPE)
"""
import os
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import quantize, dequantize

rng = np.random.default_rng(20261129)
out = os.path.join(os.path.dirname(__file__), "..", "Tests", "GGUFTests", "Fixtures", "quant-golden.bin")
# A GGUF file; the .bin name keeps model files out of the repository's *.gguf rules.
w = gguf.GGUFWriter(out, arch="test")

# Quantizer input: 16 blocks of 32 with awkward cases, then random blocks; 256 * 4 values in all.
special = [
    np.zeros(32), np.full(32, 0.25), np.full(32, -3.0),
    np.linspace(-1, 1, 32), np.arange(32) - 15.5,
    np.array([0.5, -0.5, 1.5, -1.5] * 8) / 127 * 2.0,
    np.concatenate([[8.0], np.full(31, 0.5)]), np.concatenate([[-8.0], np.full(31, 0.5)]),
    rng.normal(0, 1e-6, 32), rng.normal(0, 1e3, 32),
    np.array([1e-30] * 32), rng.uniform(-1, 1, 32) * (np.arange(32) % 2),
]
rand = rng.normal(0, 1, 1024 - 32 * len(special)) * np.repeat(rng.uniform(0.001, 3, (1024 - 32 * len(special)) // 32), 32)
values = np.concatenate(special + [rand]).astype(np.float32)
w.add_tensor("quantize.input", values)
for t in [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]:
    q = quantize(values.reshape(4, 256), t)
    w.add_tensor(f"quantize.{t.name}", q.reshape(-1).view(np.int8), raw_dtype=T.I8)

# Dequantizer input: random bytes with the f16 scale fields replaced by plausible values.
scale_fields = {
    T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
    T.Q2_K: [80, 82], T.Q3_K: [108], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208],
}
for t, fields in scale_fields.items():
    block_size, type_size = gguf.GGML_QUANT_SIZES[t]
    n_blocks = 8 if block_size == 256 else 32
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for f in fields:
        scales = rng.normal(0, 0.05, n_blocks).astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
        blocks[:, f:f + 2] = scales
    vals = dequantize(blocks.reshape(-1), t).astype(np.float32)
    w.add_tensor(f"dequantize.{t.name}.blocks", blocks.reshape(-1).view(np.int8), raw_dtype=T.I8)
    w.add_tensor(f"dequantize.{t.name}.values", vals.reshape(-1))
for t in [T.F16, T.BF16]:
    src = (rng.normal(0, 2, 256)).astype(np.float32)
    raw = quantize(src, t).view(np.uint8)
    vals = dequantize(raw, t).astype(np.float32)
    w.add_tensor(f"dequantize.{t.name}.blocks", raw.view(np.int8), raw_dtype=T.I8)
    w.add_tensor(f"dequantize.{t.name}.values", vals.reshape(-1))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print("wrote", os.path.normpath(out))
