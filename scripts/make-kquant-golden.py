#!/usr/bin/env python3
"""Writes Tests/GGUFTests/Fixtures/kquant-golden.bin: the bytes llama.cpp's own reference K-quantizers
(`quantize_row_q{2,3,4,5,6}_K_ref` in ggml-quants.c, what llama-quantize runs without an importance matrix) make of
one input, which the Swift tests compare against bit for bit. The `gguf` package has no K-quantizers, so this
compiles ggml-quants.c from the llama-cpp-python sdist on PyPI, with -ffp-contract=off: each a·b + c rounded twice,
as C's own arithmetic reads (a build that fuses them into one rounding may pick other levels on rare ties).

  pip install gguf numpy && python3 scripts/make-kquant-golden.py   (needs gcc and pip download access)

Tensors (raw bytes are stored as I8 tensors):
  kquant.input   F32   16 super-blocks of 256: zeros, constants, a ramp, tiny and huge values, one sign, an outlier,
                       alternating zeros, random groups of mixed magnitudes
  kquant.<TYPE>  I8    quantize_row_<type>_ref(input) for Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
"""
import glob, os, subprocess, sys, tarfile, tempfile
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
out = os.path.join(root, "Tests", "GGUFTests", "Fixtures", "kquant-golden.bin")
work = tempfile.mkdtemp(prefix="kquant-")

subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "llama-cpp-python",
                "-d", work], check=True, stdout=subprocess.DEVNULL)
with tarfile.open(glob.glob(os.path.join(work, "llama_cpp_python-*.tar.gz"))[0]) as t:
    t.extractall(work)
ggml = glob.glob(os.path.join(work, "llama_cpp_python-*", "vendor", "llama.cpp", "ggml"))[0]

main = r'''
#include <stdio.h>
#include <stdlib.h>
#include "ggml.h"
#include "ggml-quants.h"
// Referred to by other functions of ggml-quants.c, never by the reference quantizers.
void ggml_abort(const char *file, int line, const char *fmt, ...) { (void)fmt; fprintf(stderr, "%s:%d\n", file, line); abort(); }
size_t ggml_row_size(enum ggml_type type, int64_t ne) { (void)type; (void)ne; abort(); }
const char *ggml_type_name(enum ggml_type type) { (void)type; return "?"; }
size_t ggml_type_size(enum ggml_type type) { (void)type; abort(); }
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f) / 4; fseek(f, 0, SEEK_SET);
    float *x = malloc(n * 4); if (fread(x, 4, n, f) != (size_t)n) return 1; fclose(f);
    char *y = malloc(n * 4); char path[4096];
    struct { const char *name; size_t bytes; void (*q)(const float *, void *, int64_t); } t[] = {
        {"Q2_K", 84, (void *)quantize_row_q2_K_ref}, {"Q3_K", 110, (void *)quantize_row_q3_K_ref},
        {"Q4_K", 144, (void *)quantize_row_q4_K_ref}, {"Q5_K", 176, (void *)quantize_row_q5_K_ref},
        {"Q6_K", 210, (void *)quantize_row_q6_K_ref}};
    for (int i = 0; i < 5; i++) {
        t[i].q(x, y, n);
        snprintf(path, sizeof path, "%s/%s.bin", argv[2], t[i].name);
        FILE *o = fopen(path, "wb"); fwrite(y, 1, n / 256 * t[i].bytes, o); fclose(o);
    }
    return 0;
}
'''
with open(os.path.join(work, "kq.c"), "w") as f:
    f.write(main)
flags = ["-O2", "-ffp-contract=off", "-I" + os.path.join(ggml, "include"), "-I" + os.path.join(ggml, "src")]
subprocess.run(["gcc", *flags, "-c", os.path.join(ggml, "src", "ggml-quants.c"), "-o", os.path.join(work, "q.o")], check=True)
subprocess.run(["gcc", *flags, os.path.join(work, "kq.c"), os.path.join(work, "q.o"), "-lm", "-o", os.path.join(work, "kq")], check=True)

rng = np.random.default_rng(20261204)
groups = rng.uniform(0.001, 3, 128)  # a magnitude for each group of 32 in the random super-blocks
blocks = [
    np.zeros(256), np.full(256, 0.25), np.full(256, -3.0), np.linspace(-1, 1, 256),
    rng.normal(0, 1e-6, 256), rng.normal(0, 1e3, 256), np.full(256, 1e-30),
    rng.uniform(0, 1, 256), -rng.uniform(0, 2, 256),
    np.concatenate([[8.0], np.full(255, 0.5)]), rng.uniform(-1, 1, 256) * (np.arange(256) % 2),
    np.concatenate([np.zeros(128), rng.normal(0, 1, 128)]),
    rng.normal(0, 1, 1024) * np.repeat(groups[:32], 32),
]
values = np.concatenate(blocks).astype(np.float32)
assert values.size == 16 * 256
values.tofile(os.path.join(work, "input.bin"))
subprocess.run([os.path.join(work, "kq"), os.path.join(work, "input.bin"), work], check=True)

w = gguf.GGUFWriter(out, arch="test")
w.add_tensor("kquant.input", values)
for t in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
    raw = np.fromfile(os.path.join(work, f"{t.name}.bin"), dtype=np.int8)
    assert raw.size == 16 * gguf.GGML_QUANT_SIZES[t][1], t.name
    w.add_tensor(f"kquant.{t.name}", raw, raw_dtype=T.I8)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"wrote {out} ({os.path.getsize(out)} bytes)")
