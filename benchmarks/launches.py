"""How many kernels a training step launches, by implementation and family: the number a CUDA graph replays, and
on a GPU without one the number of launches the host pays for one by one (issue 22). Counted on a CPU, where it
takes a minute (``benchmarks.kernels``: the torch operators that compute, each counted once), with the optimizer
configured as on a GPU (Keras Adam masked by the finite flag, all parameters in each foreach operation). The count
does not depend on the batch; it does on the programs, the frames and the number of levels.

    python -m benchmarks.launches                        # mmnist and minerl sizes, 100 frames
    python -m benchmarks.launches --sizes tiny --frames 8

A GPU's own kernels differ in detail (a CPU's ``gru_cell`` is several operators, a GPU's one fused kernel; a foreach
operation is one operator here and one or two kernels there), so read the counts as a measure, not an exact count.
"""
from __future__ import annotations

import argparse
import collections

import pyro
import torch

from benchmarks.graph import pyro_step
from benchmarks.kernels import FAMILIES, NO_KERNEL, family_of, profile_steps
from benchmarks.workloads import SIZES, TrainingStep, make_nets, make_video, size_config
from pyro_cwvae.training.optim import KerasAdam

KINDS = ("Pyro meanfield", "Pyro trace", "reference")
COLUMNS = [family for family, _ in FAMILIES if family != NO_KERNEL] + ["other"]


def step_of(kind: str, nets, cfg, video):
    """One training step of ``kind`` on its own copy of ``nets``, its optimizer as on a GPU."""
    if kind == "reference":
        step = TrainingStep("reference", nets, cfg, video)
        step.optimizer = KerasAdam(step.nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps, masked=True, together=True)
        return step
    train_step = pyro_step(nets, cfg.replace(elbo=kind.split()[-1]), graph=False, masked=True, together=True)
    return lambda: train_step(video, 1.0)


def counts(kind: str, nets, cfg, video) -> collections.Counter:
    """Kernels per step of ``kind`` by family (after two steps that allocate the optimizer's state)."""
    step = step_of(kind, nets, cfg, video)
    step()
    step()
    return collections.Counter(family_of(name) for name, _ in profile_steps(step, torch.device("cpu"), 1).kernels)


def table(sizes: list[str], frames: int | None) -> str:
    lines = ["| size | implementation | kernels a step | / reference | " + " | ".join(COLUMNS) + " |",
             "|---|---|---:|---:|" + "---:|" * len(COLUMNS)]
    for name in sizes:
        cfg = size_config(name, frames or SIZES[name].frames)
        nets, video = make_nets(cfg, torch.device("cpu")), make_video(1, cfg, torch.device("cpu"))
        found = {kind: counts(kind, nets, cfg, video) for kind in KINDS}
        reference = sum(found["reference"].values())
        for kind, families in found.items():
            total = sum(families.values())
            lines.append(f"| {name} ({cfg.levels} levels, {cfg.seq_len} frames) | {kind} | {total:,} | "
                         f"{total / reference:.2f} | " + " | ".join(f"{families[c]:,}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="mmnist,minerl", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--frames", type=int, default=None, help="frames per sequence (default: each size's)")
    args = parser.parse_args(argv)
    with pyro.validation_enabled(False):  # as in training
        print(table([name for name in args.sizes.split(",") if name], args.frames))


if __name__ == "__main__":
    main()
