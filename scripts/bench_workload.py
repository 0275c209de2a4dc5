"""What scripts/bench-peft.py and scripts/bench-mlx.py share: the CPU line they print and the options of the
workload of `lorakit-bench step` (BATCH × CTX random tokens, LoRA of rank RANK on the seven linear weights)."""
import argparse


def cpu():
    """The CPU's model name and its vector flags, as /proc/cpuinfo gives them."""
    name, flags = "?", []
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name") and name == "?":
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [x for x in line.split(":", 1)[1].split() if x.startswith(("avx512", "amx", "avx2", "fma"))]
    return name, flags


def workload_options():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--ctx", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--checkpointing", action="store_true")
    return p
