"""Speed and memory of the Pyro CW-VAE against the hand-written PyTorch reference (benchmarks/reference.py).

    python -m benchmarks.bench --quick                  # the whole table in a few minutes on a small CPU
    python -m benchmarks.bench --device cuda            # reference sizes (batch 50) on a GPU
    python -m benchmarks.bench --profile --sizes mmnist # where the time of a Pyro training step goes
    python -m benchmarks.bench --accel --device cuda    # bf16 / tf32 / torch.compile against fp32
    python -m benchmarks.bench --graph --device cuda    # eager, CUDA-graphed and reference steps (benchmarks/graph.py)

Prints markdown tables. Every timing row is measured side by side in one process, with the implementations
interleaved (one step of each in turn, then again), so machine noise hits them alike; the tables give medians,
and each ratio is the median of the per-round ratios. Peak memory is measured in a fresh subprocess per cell
(``benchmarks.memory``). What is timed: ``benchmarks.workloads``; Pyro's validation is off, as in training.
"""
from __future__ import annotations

import argparse
import sys
import time

import pyro
import torch

from benchmarks.accelerations import measure_accelerations
from benchmarks.breakdown import profile
from benchmarks.graph import table as graph_table
from benchmarks.memory import measure_memory
from benchmarks.workloads import (ROLLOUTS, SIZES, STEPS, Rollout, TrainingStep, batch_for, frames_for, machine,
                                  make_nets, make_video, median, paired_ratio, size_config, timed)
from pyro_cwvae.training.devices import resolve_device


def measure_steps(name: str, args, device: torch.device) -> dict:
    cfg = size_config(name, frames_for(name, args))
    batch = batch_for(name, args, device)
    nets, video = make_nets(cfg, device), make_video(batch, cfg, device)
    steps = {kind: TrainingStep(kind, nets, cfg, video) for kind in STEPS}
    for step in steps.values():  # warm-up: allocator, oneDNN / cuDNN plans, Adam state
        step()
    times = {kind: [] for kind in STEPS}
    for _ in range(args.repeats):
        for kind, step in steps.items():
            times[kind].append(timed(step, device))
    return dict(size=name, batch=batch, frames=cfg.seq_len, times=times)


def measure_rollouts(name: str, args, device: torch.device) -> dict:
    cfg = size_config(name, frames_for(name, args))
    batch = args.rollout_batch or (8 if device.type == "cuda" else 1)
    nets = make_nets(cfg, device)
    context = make_video(batch, cfg.replace(seq_len=args.context), device)
    total = args.context + args.horizon
    rollouts = {kind: Rollout(kind, nets, cfg, context, total) for kind in ROLLOUTS}
    for kind in ROLLOUTS:  # warm-up on a short rollout
        Rollout(kind, nets, cfg, context, args.context + cfg.clock.top_period)(device)
    times = {kind: [] for kind in ROLLOUTS}
    for _ in range(max(1, args.rollout_repeats)):
        for kind, rollout in rollouts.items():
            times[kind].append(rollout(device))
    return dict(size=name, batch=batch, frames=total, times=times)


def fmt_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def steps_table(rows: list[dict], memory: dict) -> str:
    lines = [
        "| size | batch x frames | Pyro trace s/step | Pyro meanfield s/step | reference s/step "
        "| trace / ref | meanfield / ref |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        t = row["times"]
        lines.append(
            f"| {row['size']} | {row['batch']} x {row['frames']} | {median(t['trace']):.3f} "
            f"| {median(t['meanfield']):.3f} | {median(t['reference']):.3f} "
            f"| {paired_ratio(t['trace'], t['reference']):.2f} | {paired_ratio(t['meanfield'], t['reference']):.2f} |")
    if memory:
        lines += ["", "| size | batch x frames | Pyro trace peak MiB | Pyro meanfield peak MiB | reference peak MiB "
                      "| trace / ref | meanfield / ref |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for row in rows:
            m = memory[row["size"]]
            ratio = (lambda a: f"{m[a] / m['reference']:.2f}" if m[a] and m["reference"] else "n/a")
            lines.append(f"| {row['size']} | {row['batch']} x {row['frames']} | {fmt_mib(m['trace'])} "
                         f"| {fmt_mib(m['meanfield'])} | {fmt_mib(m['reference'])} | {ratio('trace')} "
                         f"| {ratio('meanfield')} |")
    return "\n".join(lines)


def rollouts_table(rows: list[dict], memory: dict) -> str:
    lines = [
        "| size | batch x frames | Pyro states fr/s | reference states fr/s | time Pyro / ref | Pyro +decode fr/s "
        "| reference +decode fr/s | time Pyro / ref | Pyro peak MiB | reference peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        frames = row["batch"] * row["frames"]
        pyro_t, ref_t = row["times"]["pyro"], row["times"]["reference"]
        states = ([s for s, _ in pyro_t], [s for s, _ in ref_t])
        totals = ([s + d for s, d in pyro_t], [s + d for s, d in ref_t])
        m = memory.get(row["size"], {})
        lines.append(
            f"| {row['size']} | {row['batch']} x {row['frames']} | {frames / median(states[0]):,.0f} "
            f"| {frames / median(states[1]):,.0f} | {paired_ratio(states[0], states[1]):.2f} "
            f"| {frames / median(totals[0]):,.0f} | {frames / median(totals[1]):,.0f} "
            f"| {paired_ratio(totals[0], totals[1]):.2f} | {fmt_mib(m.get('pyro'))} "
            f"| {fmt_mib(m.get('reference'))} |")
    return "\n".join(lines)


def steps_section(args, device: torch.device, threads: int, started: float) -> str:
    """The training-step table of ``args.sizes``, with its heading."""
    rows, memory = [], {}
    for name in args.sizes:
        row = measure_steps(name, args, device)
        rows.append(row)
        if not args.no_memory:
            memory[name] = {kind: measure_memory(dict(what=kind, size=name, batch=row["batch"],
                                                      frames=row["frames"], device=str(device),
                                                      threads=threads)) for kind in STEPS}
        print(f"(measured {name} training steps, {time.perf_counter() - started:.0f} s)", file=sys.stderr,
              flush=True)
    reduced = device.type == "cpu" and any(SIZES[row["size"]].big and row["batch"] != 50 for row in rows)
    return (f"Training step (loss, backward, clip, Adam) in seconds, median of {args.repeats} interleaved rounds "
            f"after one warm-up step each; reference-size rows use the batch shown"
            f"{' (reduced from 50 on the CPU)' if reduced else ''}.\n\n" + steps_table(rows, memory))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument("--sizes", default="tiny,mmnist,minerl", help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 5; --quick 3)")
    parser.add_argument("--batch", type=int, default=None,
                        help="batch of the mmnist and minerl sizes (default 50 on a GPU; 8 on a CPU, 2 with --quick)")
    parser.add_argument("--frames", type=int, default=None, help="frames of the mmnist and minerl sizes (default 100)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--horizon", type=int, default=1000, help="rollout frames predicted after the context")
    parser.add_argument("--context", type=int, default=36, help="rollout context frames")
    parser.add_argument("--rollout-batch", type=int, default=None, help="rollout sequences (default 8 GPU, 1 CPU)")
    parser.add_argument("--rollout-repeats", type=int, default=None, help="timed rollout rounds (default 3; --quick 1)")
    parser.add_argument("--rollout-sizes", default=None, help="sizes to roll out (default: --sizes)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--no-rollout", action="store_true", help="skip the rollout table")
    parser.add_argument("--no-steps", action="store_true", help="skip the training-step table")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a small batch (CPU): minutes")
    parser.add_argument("--profile", action="store_true", help="break a training step down at each of --sizes")
    parser.add_argument("--accel", action="store_true",
                        help="--precision and --compile options against fp32 at each of --sizes")
    parser.add_argument("--graph", action="store_true",
                        help="the Pyro step eager and as a CUDA graph against the reference (benchmarks/graph.py)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.rollout_repeats is None:
        args.rollout_repeats = 1 if args.quick else 3
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.rollout_sizes = args.sizes if args.rollout_sizes is None else [s for s in args.rollout_sizes.split(",") if s]
    for name in args.sizes + args.rollout_sizes:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}: choose from {', '.join(SIZES)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    command = "python -m benchmarks.bench " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command}`\n\n{machine(device)}\n")
    started = time.perf_counter()
    with pyro.validation_enabled(False):
        if args.graph:
            print(graph_table(args, device), flush=True)
            return
        if args.profile or args.accel:
            for name in args.sizes:
                table = profile(name, args, device) if args.profile else measure_accelerations(name, args, device)
                print(table + "\n", flush=True)
            return
        if not args.no_steps:
            print(steps_section(args, device, threads, started) + "\n", flush=True)
        if args.no_rollout:
            return
        rollout_rows, rollout_memory = [], {}
        for name in args.rollout_sizes:
            row = measure_rollouts(name, args, device)
            rollout_rows.append(row)
            if not args.no_memory:
                rollout_memory[name] = {kind: measure_memory(dict(
                    what=kind, size=name, batch=row["batch"], frames=frames_for(name, args), context=args.context,
                    horizon=args.horizon, device=str(device), threads=threads)) for kind in ROLLOUTS}
            print(f"(measured {name} rollouts, {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        print(f"Open-loop rollout: {args.context} context frames filtered, {args.horizon} predicted, all decoded "
              f"(uint8); frames per second = batch x frames / s, median of {args.rollout_repeats} round(s).\n")
        print(rollouts_table(rollout_rows, rollout_memory))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
