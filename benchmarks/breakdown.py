"""Where the time of a training step goes (``--profile``): its parts timed alone, interleaved with whole steps, then
cProfile of a Pyro step, its own time grouped by where the code lives."""
from __future__ import annotations

import cProfile
import pstats

import torch
from torch.distributions import Normal

from benchmarks import reference
from benchmarks.workloads import (STEPS, TrainingStep, batch_for, frames_for, machine, make_nets, make_video, median,
                                  paired_ratio, size_config, synchronize, timed)
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.nets import CWVAENets


def latent_path(nets: CWVAENets, cfg: Config, embeddings: list[torch.Tensor]) -> torch.Tensor:
    """The levels' GRU chains, posterior and prior heads and KLs, as the reference computes them."""
    states, kl = reference.filter_levels(reference.Weights(nets), cfg, embeddings, cfg.seq_len)
    return kl.sum() + states.sum()


def parts(nets: CWVAENets, cfg: Config, video: torch.Tensor) -> dict:
    """The parts of a step, forward and backward each, by label."""
    B, T = video.shape[:2]
    encoder, decoder = nets.encoder, nets.decoder
    features = encoder.conv(video.flatten(0, 1)).view(B, T, -1).detach()
    embeddings = [e.detach() for e in encoder(video)]
    states = torch.randn(B, T, cfg.state_size, device=video.device)

    def backward(value: torch.Tensor) -> None:
        nets.zero_grad(set_to_none=True)
        value.backward()

    def level_embeddings() -> torch.Tensor:
        total, hidden = features.sum() * 0, features
        for stack in encoder.stacks:
            hidden = stack(hidden)
            total = total + hidden.sum()
        return total

    def decoder_loglik() -> torch.Tensor:
        return Normal(decoder(states), cfg.dec_std).log_prob(video).sum()

    return {
        "conv encoder (fwd+bwd)": lambda: backward(encoder.conv(video.flatten(0, 1)).sum()),
        "level embedding stacks (fwd+bwd)": lambda: backward(level_embeddings()),
        "decoder + likelihood (fwd+bwd)": lambda: backward(decoder_loglik()),
        "latent path: GRUs, heads, KLs (fwd+bwd)": lambda: backward(latent_path(nets, cfg, embeddings)),
    }


def profile(name: str, args, device: torch.device) -> str:
    """Time the parts of a training step at one size and break a Pyro step down with cProfile."""
    cfg = size_config(name, frames_for(name, args))
    batch = batch_for(name, args, device)
    nets, video = make_nets(cfg, device), make_video(batch, cfg, device)
    steps = {kind: TrainingStep(kind, nets, cfg, video) for kind in STEPS}
    timed_parts = {**parts(nets, cfg, video), "step: reference": steps["reference"],
                   "step: Pyro meanfield": steps["meanfield"], "step: Pyro trace": steps["trace"]}
    for part in timed_parts.values():
        part()
    times = {label: [] for label in timed_parts}
    for _ in range(args.repeats):
        for label, part in timed_parts.items():
            times[label].append(timed(part, device))
    ref = times["step: reference"]
    lines = [f"Profile at size {name}, batch {batch} x {cfg.seq_len} frames, {machine(device)}; "
             f"median of {args.repeats} interleaved rounds.", "",
             "| part | s | / reference step |", "|---|---:|---:|"]
    for label, values in times.items():
        lines.append(f"| {label} | {median(values):.4f} | {paired_ratio(values, ref):.3f} |")
    for kind in ("meanfield", "trace"):
        lines += python_time(kind, steps[kind], device)
    return "\n".join(lines)


def python_time(kind: str, step: TrainingStep, device: torch.device) -> list[str]:
    """Table lines: cProfile's own time of two Pyro steps, per step, grouped by where the code lives."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(2):
        step()
    profiler.disable()
    synchronize(device)
    groups: dict[str, float] = {}
    for (filename, _, function), (_, _, own, _, _) in pstats.Stats(profiler).stats.items():
        groups[group_of(filename, function)] = groups.get(group_of(filename, function), 0.0) + own / 2
    total = sum(groups.values())
    lines = ["", f"cProfile of a Pyro {kind} step (own time per group, s; cProfile's overhead inflates "
                 f"the Python groups): total {total:.3f}", "", "| group | s | share |", "|---|---:|---:|"]
    for group, own in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"| {group} | {own:.4f} | {own / total:.1%} |")
    return lines


def group_of(filename: str, function: str) -> str:
    if "run_backward" in function:
        return "autograd backward (C++)"
    if filename == "~":
        return "torch ops forward (C++) and other builtins"
    for marker, group in (("/pyro/", "Pyro (Python: poutine, primitives, distributions)"),
                          ("/torch/distributions/", "torch.distributions (Python)"),
                          ("/torch/optim/", "Adam (Python + ops)"),
                          ("/torch/nn/", "torch.nn (Python)"),
                          ("pyro_cwvae", "model, guide, nets, elbo (Python)"),
                          ("/models/", "model, guide, nets, elbo (Python)"),
                          ("/guides/", "model, guide, nets, elbo (Python)")):
        if marker in filename:
            return group
    return "other Python"
