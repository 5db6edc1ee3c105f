"""The optimizer step alone: the Keras Adam of ``pyro-cwvae fit`` (pyro_cwvae/training/optim.py, one parameter at a
time in tensor operations, the step count on the device), taking its step in place (its default on a CPU) and masked
(capturable, its default on CUDA), against torch's Adam on the same weights and gradients, single-tensor (the
operations KerasAdam mirrors) and foreach (torch's default on a GPU), at the mmnist and minerl sizes.

    python -m benchmarks.optimizer                       # CPU, mmnist and minerl
    python -m benchmarks.optimizer --device cuda         # eager on a GPU (under --cuda-graph the step is replayed)

Each round times one step of each optimizer in turn (interleaved, so a busy machine slows them alike); the table
gives the median seconds per step and the median of the per-round ratios to KerasAdam.
"""
from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.workloads import machine, make_nets, median, paired_ratio, size_config, timed
from pyro_cwvae.training.devices import resolve_device
from pyro_cwvae.training.optim import KerasAdam

OPTIMIZERS = {  # what ``pyro-cwvae fit`` runs: a step with the finite flag ``ok``, in place on a CPU, masked on CUDA
    "KerasAdam": lambda params: KerasAdam(params, lr=3e-4, eps=1e-4),
    "KerasAdam, masked": lambda params: KerasAdam(params, lr=3e-4, eps=1e-4, masked=True),
    "torch Adam, single-tensor": lambda params: torch.optim.Adam(params, lr=3e-4, eps=1e-4, foreach=False),
    "torch Adam, foreach": lambda params: torch.optim.Adam(params, lr=3e-4, eps=1e-4, foreach=True),
}


def optimizer_times(size: str, device: torch.device, repeats: int) -> dict[str, list[float]]:
    """Seconds of ``repeats`` steps of each optimizer on its own copy of the networks of ``size``, with fixed
    random gradients."""
    optimizers = {}
    for name, make in OPTIMIZERS.items():
        params = list(make_nets(size_config(size, 36), device).parameters())
        generator = torch.Generator(device=device).manual_seed(0)
        for param in params:
            param.grad = torch.randn(param.shape, generator=generator, device=device) * 1e-3
        optimizers[name] = make(params)
        optimizers[name].step()  # the first step allocates the moments
    ok = torch.tensor(True, device=device)
    times = {name: [] for name in OPTIMIZERS}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            step = (lambda: optimizer.step(ok=ok)) if isinstance(optimizer, KerasAdam) else optimizer.step
            times[name].append(timed(step, device))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sizes", default="mmnist,minerl")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    print(f"optimizer step, {args.repeats} interleaved rounds; {machine(device)}\n")
    print("| size | optimizer | parameters | s/step | ratio to KerasAdam |")
    print("|---|---|---:|---:|---:|")
    for size in args.sizes.split(","):
        times = optimizer_times(size, device, args.repeats)
        count = sum(p.numel() for p in make_nets(size_config(size, 36), device).parameters())
        keras = times["KerasAdam"]
        for name, values in times.items():
            print(f"| {size} | {name} | {count:,} | {median(values):.4f} | {paired_ratio(values, keras):.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
