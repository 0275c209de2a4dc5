#!/usr/bin/env bash
# Prints the compiler flags for a release build tuned to this CPU: Swift otherwise emits baseline x86-64 (SSE2)
# code, where SIMD conversions and multiply-adds are several times slower. Haswell's instruction set (AVX2, FMA)
# runs on every x86-64 CPU from 2013 on; older CPUs get no flags. The package itself declares no unsafe flags,
# so it stays usable as a dependency.
if [ "$(uname -m)" = "x86_64" ] && grep -q -m1 -w avx2 /proc/cpuinfo 2>/dev/null && grep -q -m1 -w fma /proc/cpuinfo 2>/dev/null; then
  echo "-Xswiftc -target-cpu -Xswiftc haswell"
fi
