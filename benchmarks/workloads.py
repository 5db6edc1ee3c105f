"""What the benchmarks time: the sizes, one training step of each implementation, and one open-loop rollout.

A training step is loss -> backward -> clip_grad_norm_ -> Adam step, as in ``pyro_cwvae.training.loop``, for
  - Pyro ``trace``:     ``elbo_terms`` with cfg.elbo = "trace" (Trace_ELBO's estimator),
  - Pyro ``meanfield``: ``elbo_terms`` with cfg.elbo = "meanfield" (analytic KL),
  - ``reference``:      ``reference.negative_elbo`` (analytic KL, no Pyro).
A rollout filters the context, predicts with the prior and decodes every frame: the package's ``rollout_trace``
and ``decode`` against ``reference.open_loop_states`` and ``reference.decode``.
"""
from __future__ import annotations

import copy
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import pyro
import torch

from benchmarks import reference
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.model.config import Config, preset
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.prediction.frames import decode
from pyro_cwvae.prediction.latents import rollout_trace
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.training.optim import KerasAdam

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
        self.run = Run(cfg, self.nets, model, guide, step=0)

    def states(self) -> torch.Tensor:
        if self.kind == "reference":
            return reference.open_loop_states(self.nets, self.context, self.total, self.cfg)
        return rollout_trace(self.run, self.context, self.total).nodes["_RETURN"]["value"]

    def decode(self, states: torch.Tensor):
        return reference.decode(self.nets, states, self.cfg) if self.kind == "reference" else decode(self.run, states)

    def __call__(self, device: torch.device) -> tuple[float, float]:
        holder = {}
        states_s = timed(lambda: holder.setdefault("states", self.states()), device)
        decode_s = timed(lambda: self.decode(holder["states"]), device)
        return states_s, decode_s


def median(values) -> float:
    return statistics.median(values)


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    return median([a / b for a, b in zip(numerator, denominator)])


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, CUDA {torch.version.cuda}, torch {torch.__version__}, pyro-ppl {pyro.__version__}"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, pyro-ppl {pyro.__version__}, Python {platform.python_version()}")
