"""Peak memory of one training step or rollout, each measured in a fresh interpreter.

    python -m benchmarks.memory TASK      # TASK: the JSON that ``measure_memory`` passes; prints {"peak_mib": ...}

On a CPU: the growth of the resident set over the pre-step resident set (VmHWM, the counter behind ``ru_maxrss``,
reset after a warm-up step); on a GPU: the peak of ``torch.cuda.max_memory_allocated`` over the pre-step allocation.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pyro
import torch

from benchmarks.workloads import STEPS, Rollout, TrainingStep, make_nets, make_video, size_config

ROOT = Path(__file__).resolve().parents[1]


def measure_memory(task: dict) -> float | None:
    """Peak memory of one step or rollout (MiB) in a fresh interpreter; None if the child failed."""
    command = [sys.executable, "-m", "benchmarks.memory", json.dumps(task)]
    # glibc: serve every allocation over 64 KiB by mmap and unmap it on free, so the resident set follows the
    # live tensors instead of the allocator's cached arenas
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        print(f"memory of {task} failed:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])["peak_mib"]


def resident_mib() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: fall back to the high-water mark so far
        return max_resident_mib()


def max_resident_mib() -> float:
    """High-water mark of the resident set. Linux: VmHWM of this address space, which ``reset_peak_resident``
    can reset; ``ru_maxrss`` would also remember the parent's resident set at the fork before our exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def reset_peak_resident() -> bool:
    """Reset the kernel's high-water mark of the resident set (VmHWM; Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def child(task: dict) -> None:
    """Run one training step or one rollout and print its peak memory above what was in use before it.

    A warm-up first (the same step; for a rollout a short one) allocates the optimizer state and loads the
    kernels' code and scratch buffers, then the peak is reset, so the number is the step's own working memory.
    """
    device = torch.device(task["device"])
    torch.set_num_threads(task["threads"])
    cfg = size_config(task["size"], task["frames"])
    nets = make_nets(cfg, device)
    if task["what"] in STEPS:
        work = TrainingStep(task["what"], nets, cfg, make_video(task["batch"], cfg, device))
        work()
    else:
        context = make_video(task["batch"], cfg.replace(seq_len=task["context"]), device)
        Rollout(task["what"], nets, cfg, context, task["context"] + cfg.clock.top_period)(device)
        rollout = Rollout(task["what"], nets, cfg, context, task["context"] + task["horizon"])
        work = (lambda: rollout(device))
    del nets
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        work()
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        exact = reset_peak_resident()
        base = resident_mib()
        work()
        peak = max_resident_mib() - base
        if not exact:  # the high-water mark may still be the warm-up's
            print("could not reset the peak resident set: the number is a lower bound", file=sys.stderr)
    print(json.dumps(dict(peak_mib=peak)))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):  # run by bench.py, not by hand
        sys.exit(__doc__)
    with pyro.validation_enabled(False):
        child(json.loads(sys.argv[1]))
