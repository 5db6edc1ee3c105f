"""Speed and memory of the Pyro CW-VAE against the hand-written PyTorch reference (benchmarks/reference.py).

    python benchmarks/bench.py --quick                  # the whole table in a few minutes on a small CPU
    python benchmarks/bench.py --device cuda            # reference sizes (batch 50) on a GPU
    python benchmarks/bench.py --profile --sizes mmnist # where the time of a Pyro training step goes
    python benchmarks/bench.py --accel --device cuda    # bf16 / tf32 / torch.compile against fp32

Prints markdown tables. Every timing row is measured side by side in one process, with the implementations
interleaved (one step of each in turn, then again), so machine noise hits them alike; the tables give medians,
and each ratio is the median of the per-round ratios. Peak memory is measured in a fresh subprocess per cell:
growth of the resident set over the pre-step resident set on a CPU (VmHWM, the counter behind ``ru_maxrss``,
reset after a warm-up step), the peak of
``torch.cuda.max_memory_allocated`` over the pre-step allocation on a GPU.

Training step = loss -> backward -> clip_grad_norm_ -> Adam step, as in ``pyro_cwvae.train``, for
  - Pyro ``trace``:     ``elbo_terms`` with cfg.elbo = "trace" (Trace_ELBO's estimator),
  - Pyro ``meanfield``: ``elbo_terms`` with cfg.elbo = "meanfield" (analytic KL),
  - ``reference``:      ``reference.negative_elbo`` (analytic KL, no Pyro),
with Pyro's validation off, as in training. Rollout = filter the context, then predict with the prior to a
1000-frame horizon and decode every frame: ``predict.open_loop_states`` + ``predict.decode`` against
``reference.open_loop_states`` + ``reference.decode``.
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pyro  # noqa: E402
import torch  # noqa: E402
from pyro import poutine  # noqa: E402
from pyro.poutine.util import prune_subsample_sites  # noqa: E402
from torch.distributions import Normal, kl_divergence  # noqa: E402

from benchmarks import reference  # noqa: E402
from pyro_cwvae.accel import autocast, compile_nets, set_matmul_precision  # noqa: E402
from pyro_cwvae.config import Config, preset  # noqa: E402
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST  # noqa: E402
from pyro_cwvae.elbo import ElboTerms, elbo_terms, level_of  # noqa: E402
from pyro_cwvae.guides.cwvae import guide  # noqa: E402
from pyro_cwvae.models.cwvae import model  # noqa: E402
from pyro_cwvae.nets import CWVAENets  # noqa: E402
from pyro_cwvae.optim import KerasAdam  # noqa: E402
from pyro_cwvae.predict import TrainedRun, decode, open_loop_states  # noqa: E402
from pyro_cwvae.accel import resolve_device  # noqa: E402

TINY = dict(levels=2, factor=2, z_size=4, h_size=8, embed_size=8, enc_dense_size=16, enc_dense_layers=2)


@dataclass(frozen=True)
class Size:
    config: dict  # Config fields
    batch: int  # the reference batch
    frames: int  # frames per training sequence
    big: bool  # a reference size: batch reduced on a CPU unless --batch says otherwise


SIZES = {
    "tiny": Size(TINY, batch=2, frames=8, big=False),
    # 3 levels, k 6, z 20 / h 200 / embed 200
    "mmnist": Size(preset("mmnist").to_dict(), batch=50, frames=100, big=True),
    "minerl": Size(preset("minerl").to_dict(), batch=50, frames=100, big=True),  # z 100 / h 800 / embed 800, RGB
}
STEPS = ("trace", "meanfield", "reference")
ROLLOUTS = ("pyro", "reference")


# ---------------------------------------------------------------------------------------------------- settings


def size_config(name: str, frames: int) -> Config:
    return Config(**{**SIZES[name].config, "seq_len": frames, "workers": 0}).validate()


def batch_for(name: str, args, device: torch.device) -> int:
    size = SIZES[name]
    if not size.big:
        return size.batch
    if args.batch:
        return args.batch
    if device.type == "cuda":
        return size.batch
    return 2 if args.quick else 8  # a reference-size step at batch 50 takes ~20 s on a 2-core CPU


def frames_for(name: str, args) -> int:
    return args.frames if (args.frames and SIZES[name].big) else SIZES[name].frames


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------- what is timed


def make_nets(cfg: Config, device: torch.device) -> CWVAENets:
    """Networks with the same initial weights for every implementation (each step takes its own copy)."""
    pyro.clear_param_store()  # the Pyro copies register under one name: the store's tensors are never read
    pyro.set_rng_seed(0)
    return CWVAENets(cfg).to(device)


def make_video(batch: int, cfg: Config, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch, cfg.seq_len, cfg.channels, 64, 64, generator=generator).to(device)


class TrainingStep:
    """One optimisation step of one implementation on its own copy of the networks (same initial weights)."""

    def __init__(self, kind: str, nets: CWVAENets, cfg: Config, video: torch.Tensor):
        self.kind, self.video = kind, video
        self.cfg = cfg.replace(elbo="meanfield" if kind == "reference" else kind)
        self.nets = copy.deepcopy(nets)
        self.optimizer = KerasAdam(self.nets.parameters(), lr=self.cfg.lr, eps=self.cfg.adam_eps)  # as training

    def loss(self) -> torch.Tensor:
        if self.kind == "reference":
            return reference.negative_elbo(self.nets, self.video, self.cfg).loss
        return elbo_terms(model, guide, self.video, self.nets, self.cfg).loss

    def __call__(self) -> None:
        loss = self.loss()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.nets.parameters(), self.cfg.clip_norm)
        self.optimizer.step()


class Rollout:
    """Filter ``context`` frames, predict to ``total`` frames, decode them all; states and decoding timed apart."""

    def __init__(self, kind: str, nets: CWVAENets, cfg: Config, context: torch.Tensor, total: int):
        self.kind, self.cfg, self.context, self.total = kind, cfg, context, total
        self.nets = nets.eval()
        self.run = TrainedRun(cfg, self.nets, model, guide, step=0)

    def states(self) -> torch.Tensor:
        if self.kind == "reference":
            return reference.open_loop_states(self.nets, self.context, self.total, self.cfg)
        return open_loop_states(self.run, self.context, self.total)

    def decode(self, states: torch.Tensor):
        return reference.decode(self.nets, states, self.cfg) if self.kind == "reference" else decode(self.run, states)

    def __call__(self, device: torch.device) -> tuple[float, float]:
        holder = {}
        states_s = timed(lambda: holder.setdefault("states", self.states()), device)
        decode_s = timed(lambda: self.decode(holder["states"]), device)
        return states_s, decode_s


# ------------------------------------------------------------------------------------------------ measurements


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


def measure_memory(task: dict, args) -> float | None:
    """Peak memory of one step or rollout (MiB) in a fresh interpreter; None if the child failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(task)]
    # glibc: serve every allocation over 64 KiB by mmap and unmap it on free, so the resident set follows the
    # live tensors instead of the allocator's cached arenas
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
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


# ------------------------------------------------------------------------------------------------------ tables


def median(values) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return median([a / b for a, b in zip(numerator, denominator)])


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


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, CUDA {torch.version.cuda}, torch {torch.__version__}, pyro-ppl {pyro.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, Python {platform.python_version()}")


# ------------------------------------------------------------------------------------------------ accelerations


ACCELERATIONS = {  # row label: (--precision, --compile); fp32 first, the baseline of each size
    "fp32": ("fp32", "none"),
    "tf32": ("tf32", "none"),
    "bf16 autocast": ("bf16", "none"),
    "compile": ("fp32", "default"),
    "bf16 autocast + compile": ("bf16", "default"),
}


class AcceleratedStep(TrainingStep):
    """A Pyro meanfield training step with ``--precision`` and ``--compile`` applied, as ``pyro_cwvae.train`` does."""

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


# ----------------------------------------------------------------------------------------------------- profile


def meanfield_terms_direct(video: torch.Tensor, nets: CWVAENets, cfg: Config) -> ElboTerms:
    """``elbo_terms`` for cfg.elbo == "meanfield" without the log-densities of the latent sites.

    ``get_importance_trace`` computes log q and log p of every latent site, which the analytic-KL ELBO never
    reads; this traces the guide, replays the model against it, and reads only the observed site's density.
    The candidate change to ``pyro_cwvae/elbo.py`` measured by ``--profile``.
    """
    args = (video, nets, cfg)
    with nets.sharing_deterministic_path():
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args))
        model_trace = prune_subsample_sites(poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args))
    frames = video.shape[0] * video.shape[1]
    reconstruction = video.new_zeros(())
    per_level = [[] for _ in range(cfg.levels + 1)]
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            reconstruction = reconstruction - site["fn"].log_prob(site["value"]).sum() * site["scale"]
            continue
        guide_site = guide_trace.nodes[name]
        level = level_of(name)
        per_level[level if level is not None and level <= cfg.levels else 0].append(
            kl_divergence(guide_site["fn"], site["fn"]).sum() * guide_site["scale"])
    kl = torch.stack([sum(terms, video.new_zeros(())) for terms in per_level])
    loss = (reconstruction + kl.sum()) / frames
    return ElboTerms(loss, reconstruction / frames, kl[1:] / frames, loss)  # the objective: no KL shaping


def latent_path(nets: CWVAENets, cfg: Config, embeddings: list[torch.Tensor]) -> torch.Tensor:
    """The levels' GRU chains, posterior and prior heads and KLs, as the reference computes them."""
    states, kl = reference.filter_levels(reference.Weights(nets), cfg, embeddings, cfg.seq_len)
    return kl.sum() + states.sum()


def profile(name: str, args, device: torch.device) -> str:
    """Time the parts of a training step at one size and break a Pyro step down with cProfile."""
    cfg = size_config(name, frames_for(name, args))
    batch = batch_for(name, args, device)
    nets, video = make_nets(cfg, device), make_video(batch, cfg, device)
    B, T = video.shape[:2]
    encoder, decoder = nets.encoder, nets.decoder
    features = encoder.conv(video.flatten(0, 1)).view(B, T, -1).detach()
    embeddings = [e.detach() for e in encoder(video)]
    states = torch.randn(B, T, cfg.state_size, device=device)

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

    def direct_meanfield_step() -> None:
        loss = meanfield_terms_direct(video, step_nets, meanfield).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(step_nets.parameters(), cfg.clip_norm)
        optimizer.step()

    meanfield = cfg.replace(elbo="meanfield")
    pyro.set_rng_seed(5)
    expected = elbo_terms(model, guide, video, nets, meanfield)
    pyro.set_rng_seed(5)
    candidate = meanfield_terms_direct(video, nets, meanfield)
    for a, b in zip((expected.loss, expected.reconstruction, expected.kl),
                    (candidate.loss, candidate.reconstruction, candidate.kl)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)

    steps = {kind: TrainingStep(kind, nets, cfg, video) for kind in STEPS}
    step_nets = copy.deepcopy(nets)
    optimizer = KerasAdam(step_nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps)
    parts = {
        "conv encoder (fwd+bwd)": lambda: backward(encoder.conv(video.flatten(0, 1)).sum()),
        "level embedding stacks (fwd+bwd)": lambda: backward(level_embeddings()),
        "decoder + likelihood (fwd+bwd)": lambda: backward(decoder_loglik()),
        "latent path: GRUs, heads, KLs (fwd+bwd)": lambda: backward(latent_path(nets, cfg, embeddings)),
        "step: reference": steps["reference"],
        "step: Pyro meanfield": steps["meanfield"],
        "step: Pyro meanfield, latent log-probs skipped": direct_meanfield_step,
        "step: Pyro trace": steps["trace"],
    }
    for part in parts.values():
        part()
    times = {label: [] for label in parts}
    for _ in range(args.repeats):
        for label, part in parts.items():
            times[label].append(timed(part, device))
    ref = times["step: reference"]
    lines = [f"Profile at size {name}, batch {batch} x {cfg.seq_len} frames, {machine(device)}; "
             f"median of {args.repeats} interleaved rounds.", "",
             "| part | s | / reference step |", "|---|---:|---:|"]
    for label, values in times.items():
        lines.append(f"| {label} | {median(values):.4f} | {paired_ratio(values, ref):.3f} |")

    # Where the Python time of a Pyro step goes: cProfile's own time, grouped by where the code lives.
    for kind in ("meanfield", "trace"):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(2):
            steps[kind]()
        profiler.disable()
        synchronize(device)
        stats = pstats.Stats(profiler).stats
        groups: dict[str, float] = {}
        for (filename, _, function), (_, _, own, _, _) in stats.items():
            groups[group_of(filename, function)] = groups.get(group_of(filename, function), 0.0) + own / 2
        total = sum(groups.values())
        lines += ["", f"cProfile of a Pyro {kind} step (own time per group, s; cProfile's overhead inflates "
                      f"the Python groups): total {total:.3f}", "", "| group | s | share |", "|---|---:|---:|"]
        for group, own in sorted(groups.items(), key=lambda item: -item[1]):
            lines.append(f"| {group} | {own:.4f} | {own / total:.1%} |")
    return "\n".join(lines)


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


# -------------------------------------------------------------------------------------------------------- main


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
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a small batch (CPU): minutes")
    parser.add_argument("--profile", action="store_true", help="break a training step down at each of --sizes")
    parser.add_argument("--accel", action="store_true",
                        help="--precision and --compile options against fp32 at each of --sizes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
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
    if args.child:
        with pyro.validation_enabled(False):
            child(json.loads(args.child))
        return
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command}`\n\n{machine(device)}\n")
    started = time.perf_counter()
    with pyro.validation_enabled(False):
        if args.profile or args.accel:
            for name in args.sizes:
                table = profile(name, args, device) if args.profile else measure_accelerations(name, args, device)
                print(table + "\n", flush=True)
            return
        rows, memory = [], {}
        for name in args.sizes:
            row = measure_steps(name, args, device)
            rows.append(row)
            if not args.no_memory:
                memory[name] = {kind: measure_memory(dict(what=kind, size=name, batch=row["batch"],
                                                          frames=row["frames"], device=str(device),
                                                          threads=threads), args) for kind in STEPS}
            print(f"(measured {name} training steps, {time.perf_counter() - started:.0f} s)", file=sys.stderr,
                  flush=True)
        print(f"Training step (loss, backward, clip, Adam) in seconds, median of {args.repeats} interleaved "
              f"rounds after one warm-up step each; reference-size rows use the batch shown"
              + (" (reduced from 50 on the CPU)" if device.type == "cpu" and any(
                  SIZES[r['size']].big and r['batch'] != 50 for r in rows) else "") + ".\n")
        print(steps_table(rows, memory) + "\n", flush=True)
        if args.no_rollout:
            return
        rollout_rows, rollout_memory = [], {}
        for name in args.rollout_sizes:
            row = measure_rollouts(name, args, device)
            rollout_rows.append(row)
            if not args.no_memory:
                rollout_memory[name] = {kind: measure_memory(dict(
                    what=kind, size=name, batch=row["batch"], frames=frames_for(name, args), context=args.context,
                    horizon=args.horizon, device=str(device), threads=threads), args) for kind in ROLLOUTS}
            print(f"(measured {name} rollouts, {time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        print(f"Open-loop rollout: {args.context} context frames filtered, {args.horizon} predicted, all decoded "
              f"(uint8); frames per second = batch x frames / s, median of {args.rollout_repeats} round(s).\n")
        print(rollouts_table(rollout_rows, rollout_memory))
    print(f"\n(total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
