"""Graphed rows: a training step of the Pyro CW-VAE eager, the same step replayed as a CUDA graph (``--cuda-graph``,
pyro_cwvae/training/step.py), and the hand-written reference, at the mmnist and minerl sizes and the paper's batch
(50 x 100 frames) on one CUDA device.

    python -m benchmarks.graph --device cuda                      # the table (bash benchmarks/gpu.sh OUT graph)
    python -m benchmarks.bench --graph --device cuda              # the same, from the benchmark's command
    python -m benchmarks.graph --device cpu --sizes tiny --repeats 2   # the eager and reference rows on a CPU
    python -m benchmarks.graph --device cuda --profile 5          # and each one's kernels (benchmarks/kernels.py)

Each implementation is timed in a block of its own (its graph keeps one step's activations in its own memory pool
for as long as it lives, so the three are not kept side by side): ``--warmup`` untimed steps (for the graph: its
eager warm-up steps, the capture and a replay), then ``--repeats`` timed steps, median. Both Pyro rows run the
training step of ``pyro-cwvae fit`` (``TrainStep``: ELBO, backward, clipping, Keras Adam, the in-step finite check)
with the meanfield ELBO, as the reference computes it. Peak memory is the most allocated by torch on the device during
the implementation's steps, above what was allocated before them (the weights): optimizer state, gradients,
activations and, for the graph, its pool. With ``--profile N``, each implementation's block ends with N more steps
under the torch profiler (after the timed ones, so the timings are the profiler's free): its kernels by family and
the share of the wall time its device is busy (``benchmarks.kernels``), which say whether launches still dominate a
replayed step and, if not, which kernels do (issue 22's point 4: fuse the cell only where that pays).
"""
from __future__ import annotations

import argparse
import copy
import gc
import sys

import pyro
import torch

from benchmarks.kernels import profile_steps, profile_table
from benchmarks.workloads import (SIZES, TrainingStep, machine, make_nets, make_video, median, size_config, synchronize,
                                  timed)
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.training.devices import resolve_device
from pyro_cwvae.training.loop import ElboModule
from pyro_cwvae.training.optim import KerasAdam
from pyro_cwvae.training.step import WARMUP_STEPS, TrainStep

KINDS = ("Pyro eager", "Pyro graphed", "reference")
WARMUP = 2  # untimed steps of each implementation (the graph's warm-up and capture come on top)


def pyro_step(nets, cfg, graph: bool, **adam) -> TrainStep:
    """``pyro-cwvae fit``'s step on a copy of ``nets``; ``adam``: options of its Keras Adam (``masked``, ``together``)."""
    nets = copy.deepcopy(nets)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, **adam)
    return TrainStep(ElboModule(nets, model, guide, cfg, autocast_cache=not graph), optimizer, cfg.clip_norm,
                     graph=graph)


def measure(kind: str, nets, cfg, video, args, device: torch.device) -> tuple[float, float, str]:
    """Median seconds per step, peak MiB and (with ``--profile``) the kernel table of one implementation (see the
    module docstring)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    if kind == "reference":
        step = TrainingStep("reference", nets, cfg, video)
        run = step
    else:
        step = pyro_step(nets, cfg, graph=kind == "Pyro graphed")
        run = lambda: step(video, 1.0)  # noqa: E731
    warmup = WARMUP + (WARMUP_STEPS + 1 if kind == "Pyro graphed" else 0)
    for _ in range(warmup):
        run()
    seconds = median([timed(run, device) for _ in range(args.repeats)])
    synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20 if device.type == "cuda" else float("nan")
    kernels = profile_table(kind, profile_steps(run, device, args.profile)) if args.profile else ""
    del step, run
    return seconds, peak, kernels


def table(args, device: torch.device) -> str:
    """The table of ``args.sizes`` (a list), ``args.batch`` / ``args.frames`` (0 or None: each size's)."""
    profiles = []
    lines = [f"Graphed training step, {machine(device)}; median of {args.repeats} steps after {WARMUP} "
             f"(+ the graph's {WARMUP_STEPS} eager warm-up steps and its capture).", "",
             "| size | batch x frames | " + " | ".join(f"{kind} s/step" for kind in KINDS) + " | eager / graphed | "
             "reference / graphed | " + " | ".join(f"{kind} peak MiB" for kind in KINDS) + " |",
             "|" + "---|" * (4 + 2 * len(KINDS))]
    for name in args.sizes:
        cfg = size_config(name, args.frames or SIZES[name].frames).replace(elbo="meanfield")
        batch = args.batch or SIZES[name].batch
        nets, video = make_nets(cfg, device), make_video(batch, cfg, device)
        kinds = [kind for kind in KINDS if device.type == "cuda" or kind != "Pyro graphed"]
        results = {kind: measure(kind, nets, cfg, video, args, device) for kind in kinds}
        results.setdefault("Pyro graphed", (float("nan"), float("nan"), ""))
        (eager, *_), (graphed, *_), (reference, *_) = (results[kind] for kind in KINDS)
        lines.append(f"| {name} | {batch} x {cfg.seq_len} | " + " | ".join(f"{results[k][0]:.4f}" for k in KINDS)
                     + f" | {eager / graphed:.2f} | {reference / graphed:.2f} | "
                     + " | ".join(f"{results[k][1]:,.0f}" for k in KINDS) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
        profiles += [f"Size {name}, {text}" for kind in kinds if (text := results[kind][2])]
        del nets, video
    return "\n\n".join(["\n".join(lines), *profiles])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--sizes", default="mmnist,minerl", help="comma-separated: tiny, mmnist, minerl")
    parser.add_argument("--batch", type=int, default=0, help="sequences per batch (default: each size's, 50)")
    parser.add_argument("--frames", type=int, default=0, help="frames per sequence (default: each size's, 100)")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per implementation")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then N steps of each under the torch profiler: kernels by family, busy share")
    args = parser.parse_args(argv)
    args.sizes = [name for name in args.sizes.split(",") if name]
    device = resolve_device(args.device)
    if args.profile and device.type == "cuda":  # start the profiler's CUDA tracing before any graph is captured
        profile_steps(lambda: torch.ones(1, device=device).add_(1), device, 1)
    with pyro.validation_enabled(False):  # as in training
        print(table(args, device))


if __name__ == "__main__":
    main()
