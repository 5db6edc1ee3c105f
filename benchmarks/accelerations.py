"""The ``--precision`` and ``--compile`` options of a Pyro meanfield training step against fp32 (``--accel``)."""
from __future__ import annotations

import pyro
import torch

from benchmarks.workloads import (TrainingStep, batch_for, frames_for, make_nets, median, paired_ratio,
                                  size_config, timed)
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.devices import autocast, compile_nets, set_matmul_precision

ACCELERATIONS = {  # row label: (--precision, --compile); fp32 first, the baseline of each size
    "fp32": ("fp32", "none"),
    "tf32": ("tf32", "none"),
    "bf16 autocast": ("bf16", "none"),
    "compile": ("fp32", "default"),
    "bf16 autocast + compile": ("bf16", "default"),
}


class AcceleratedStep(TrainingStep):
    """A Pyro meanfield training step with ``--precision`` and ``--compile`` applied, as ``pyro_cwvae.training.loop`` does."""

    def __init__(self, precision: str, compile_mode: str, nets: CWVAENets, cfg: Config, video: torch.Tensor):
        super().__init__("meanfield", nets, cfg, video)
        self.precision = precision
        compile_nets(self.nets, compile_mode)
        self.losses: list[float] = []

    def loss(self) -> torch.Tensor:
        set_matmul_precision(self.precision, self.video.device)
        pyro.set_rng_seed(len(self.losses))  # every option draws the same noise at its n-th step
        with autocast(self.precision, self.video.device):
            loss = super().loss()
        self.losses.append(loss.item())
        return loss


def measure_accelerations(name: str, args, device: torch.device) -> str:
    """Each acceleration against fp32 at one size: s/step, first-step (compile) time, and the loss it reaches."""
    cfg = size_config(name, frames_for(name, args))
    batch = batch_for(name, args, device)
    frames = GeneratedMovingMNIST().train_batch(0, batch, cfg.seq_len, seed=0)  # real frames: a loss worth comparing
    video = torch.from_numpy(frames).to(device).float().div_(255).expand(-1, -1, cfg.channels, -1, -1).contiguous()
    nets = make_nets(cfg, device)
    options = {label: o for label, o in ACCELERATIONS.items() if device.type == "cuda" or o[0] != "tf32"}
    steps = {label: AcceleratedStep(*option, nets, cfg, video) for label, option in options.items()}
    first = {label: timed(step, device) for label, step in steps.items()}  # compiles where asked
    times = {label: [] for label in steps}
    for _ in range(args.repeats):
        for label, step in steps.items():
            times[label].append(timed(step, device))
    base = steps["fp32"].losses
    lines = [f"Size {name}, batch {batch} x {cfg.seq_len} frames, Pyro meanfield training step on one Moving MNIST "
             f"batch; {args.repeats} interleaved rounds after a first step each. Loss: nats/frame at the first step "
             f"(same weights, same noise) and after {1 + args.repeats} steps, as the difference from fp32.\n",
             "| option | s/step | / fp32 | first step s | loss at step 1 | diff | "
             f"loss at step {1 + args.repeats} | diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, step in steps.items():
        losses = step.losses
        lines.append(f"| {label} | {median(times[label]):.3f} | {paired_ratio(times[label], times['fp32']):.2f} "
                     f"| {first[label]:.1f} | {losses[0]:.2f} | {losses[0] - base[0]:+.3f} | {losses[-1]:.2f} "
                     f"| {losses[-1] - base[-1]:+.3f} |")
    set_matmul_precision("fp32", device)
    return "\n".join(lines)
