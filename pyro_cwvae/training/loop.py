"""Training: stochastic variational inference on the model and guide programs.

Each step estimates the negative ELBO of a batch with Pyro's estimator (``elbo.py``: Trace_ELBO by default,
TraceMeanField_ELBO with analytic KLs as an option), back-propagates, clips the global gradient norm as the
reference does, and takes an Adam step, all in one ``TrainStep`` (step.py), which a CUDA device captures and
replays as a CUDA graph (``--cuda-graph``). The run directory holds the config, the latest checkpoint and the
history, each written atomically; ``resume`` continues from the checkpoint exactly where an uninterrupted run
would have been.
"""
from __future__ import annotations

import signal
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyro
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.loader import train_batches
from pyro_cwvae.errors import NumericalError, UserError
from pyro_cwvae.files.atomic import remove_leftovers, write_text
from pyro_cwvae.model.config import CONFIG_FILE, Config, kl_scale
from pyro_cwvae.model.elbo import ElboTerms, elbo_terms
from pyro_cwvae.model.programs import Programs, load_programs
from pyro_cwvae.training.checkpoint import (CHECKPOINT, load_trained, restore_nets, rng_state, save_checkpoint,
                                            set_rng_state)
from pyro_cwvae.training.devices import autocast, compile_nets, resolve_device, set_deterministic, set_matmul_precision
from pyro_cwvae.training.distributed import Group, join, leave
from pyro_cwvae.training.history import HISTORY, History, Row
from pyro_cwvae.training.optim import KerasAdam
from pyro_cwvae.training.step import TrainStep, step_mode, use_cuda_graph
from pyro_cwvae.training.watching import Watcher, Watching

LOG_EVERY = 10  # steps between reading the logged values back from the device
EVENT_FILES = "events.out.tfevents.*"  # TensorBoard's files, which a watcher may write into the run directory


@dataclass
class FitResult:
    run_dir: Path
    step: int
    history: History
    nets: torch.nn.Module  # built by the programs' make_nets
    rank: int = 0  # this process's rank when several train together
    interrupted: bool = False


def fit(cfg: Config, dataset: VideoDataset, *, resume: bool = False, max_bad_steps: int = 0,
        progress: bool = True, watchers: Sequence[Watcher] = ()) -> FitResult:
    """Train ``cfg`` on ``dataset`` into ``cfg.run_dir`` (a new one, or the one to resume), with ``watchers``
    looking on (watching.py). Under ``torchrun`` every process calls this; each trains on its rows of every batch
    (see distributed.py)."""
    group, device_name = join(cfg.device)
    try:
        result = train(cfg, dataset, group, resolve_device(device_name), resume, max_bad_steps, progress, watchers)
    except BaseException:
        leave(group)  # without waiting: the other processes may never get this far
        raise
    # Every process is done with its collectives (rank 0 with its last save) before any tears the group down:
    # a process leaving early can abort at exit in the communication library's threads.
    group.barrier()
    leave(group)
    return result


def train(cfg: Config, dataset: VideoDataset, group: Group, device: torch.device, resume: bool,
          max_bad_steps: int, progress: bool, watchers: Sequence[Watcher] = ()) -> FitResult:
    run_dir = Path(cfg.run_dir)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # streams, and so a CUDA graph's capture, are the current device's
    set_matmul_precision(cfg.precision, device)
    set_deterministic(cfg.deterministic, device)
    # A resumed run runs the programs recorded in its checkpoint (run_config refused them unless the user trusts them);
    # the checkpoint, read once, is checked against the networks they build before anything is restored from it.
    if resume:
        saved, programs = load_trained(run_dir, trust_programs=True)
    else:
        saved, programs = None, load_programs(cfg.model, cfg.guide)
    if dataset.channels != cfg.channels:
        raise UserError(f"the {dataset.name} data has {dataset.channels} channel(s) but the config says {cfg.channels}")

    graph = use_cuda_graph(cfg.cuda_graph, device, cfg.compile, group.world)
    nets, optimizer, start, history = set_up(cfg, programs, device, saved, group)
    del saved  # restored: the run need not hold a second copy of the weights
    step = train_step(cfg, nets, programs, optimizer, graph, group, device)
    save = Saver(cfg, nets, optimizer, programs, history, group)
    log = StepLog(history, group, BadSteps(max_bad_steps, history.skipped_steps()))  # a resumed run's count goes on
    watching = Watching(watchers if group.is_main else (), history, optimizer, start, programs)
    bar = progress_bar(cfg, dataset.name, start, resume, progress, group,
                       step_mode(cfg.cuda_graph, device, cfg.compile, group.world))
    stop = StopRequest()
    batches = train_batches(dataset, start, cfg.steps, cfg.batch_size, cfg.seq_len, cfg.seed, workers=cfg.workers,
                            pin_memory=device.type == "cuda", rows=group.rows(cfg.batch_size))
    # Pyro's per-site checks cost time in the hot loop; the tests run the programs with them on.
    with closing(batches), bar, stop.installed(), pyro.validation_enabled(False), closing(watching):
        for done in range(start + 1, cfg.steps + 1):  # ``done``: the steps taken once this one is
            scale = kl_scale(done - 1, cfg)
            log.add(done, scale, step(next(batches), scale))  # a non-finite step is skipped inside (step.py)
            watching.after_step(done, nets)
            (stopping,) = group.any(stop.requested, device=device)
            bar.update(1)
            if done % LOG_EVERY == 0 or done == cfg.steps:
                watching.logged(log.flush(bar.write))
                bar.set_postfix_str(postfix(history.last(), watching.last_cost), refresh=False)
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping:
                watching.logged(log.flush(bar.write))
                save(done)
                watching.saved(done)
            if stopping:
                if group.is_main:
                    bar.write(f"stopped at step {done}: checkpoint saved in {run_dir}")
                return FitResult(run_dir, done, history, nets, group.rank, interrupted=True)
    return FitResult(run_dir, cfg.steps, history, nets, group.rank)


def train_step(cfg: Config, nets: torch.nn.Module, programs: Programs, optimizer: torch.optim.Optimizer,
               graph: bool, group: Group, device: torch.device) -> TrainStep:
    """The training step of ``nets`` under the run's options: compiled, averaged over processes, graphed."""
    compile_nets(nets, cfg.compile)
    elbo = ElboModule(nets, programs.model.fn, programs.guide.fn, cfg, autocast_cache=not graph)
    if group.active:
        elbo = DistributedDataParallel(elbo, device_ids=[device] if device.type == "cuda" else None)
    return TrainStep(elbo, optimizer, cfg.clip_norm, graph=graph, warmup_scale=cfg.kl_warmup > 0,
                     reduce_ok=group.all if group.active else None)


class Saver:
    """Writes the run's history and checkpoint; refuses weights that are not finite."""

    def __init__(self, cfg: Config, nets: torch.nn.Module, optimizer: torch.optim.Optimizer, programs: Programs,
                 history: History, group: Group):
        self.cfg, self.nets, self.optimizer, self.programs, self.history, self.group = (
            cfg, nets, optimizer, programs, history, group)
        self.attrs = {"config": cfg.to_json(), "elbo": cfg.elbo}  # which estimator the losses come from

    def __call__(self, step: int) -> None:
        if not all(bool(weight.isfinite().all()) for weight in self.nets.parameters()):  # one read a checkpoint
            raise NumericalError(f"the weights are not finite at step {step}: an update overflowed (lower --lr?)")
        rng = self.group.gather(rng_state())  # every process's random state, so a resume continues each stream
        if self.group.is_main:
            # History first: if a kill lands between the two writes, the history runs ahead of the checkpoint
            # and a resume drops the extra rows; the other order would leave a gap.
            run_dir = Path(self.cfg.run_dir)
            self.history.save(run_dir / HISTORY, self.attrs)
            save_checkpoint(run_dir, step=step, cfg=self.cfg, nets=self.nets, optimizer=self.optimizer,
                            programs=self.programs, rng=rng)
            write_text(run_dir / CONFIG_FILE, self.cfg.to_json())  # the checkpoint's: a resume may change --steps


def set_up(cfg: Config, programs: Programs, device: torch.device, saved: dict | None,
           group: Group) -> tuple[torch.nn.Module, torch.optim.Optimizer, int, History]:
    """The networks (``programs.make_nets``) and optimizer, new or restored from the ``saved`` checkpoint; the step
    and history to go on from."""
    pyro.clear_param_store()
    if saved is None:
        pyro.set_rng_seed(cfg.seed)  # before building the networks: the seed fixes the initial weights too
    nets = programs.make_nets(cfg).to(device)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps)  # the reference's Keras Adam
    if saved is not None:
        start, history = restore(Path(cfg.run_dir), saved, cfg, nets, optimizer, group)
    else:
        start, history = 0, History(cfg.levels)
        pyro.set_rng_seed(cfg.seed + group.rank)  # the sampling noise: one stream per process
        if group.is_main:
            start_run_dir(Path(cfg.run_dir), cfg)
    group.barrier()
    return nets, optimizer, start, history


def progress_bar(cfg: Config, data: str, start: int, resume: bool, progress: bool, group: Group,
                 mode: str) -> tqdm:
    bar = tqdm(total=cfg.steps, initial=start, disable=not (progress and group.is_main), desc="fit", unit="step",
               dynamic_ncols=True)
    if not bar.disable:
        bar.write(f"{'resuming' if resume else 'training'} a {cfg.levels}-level CW-VAE (k={cfg.factor}) on "
                  f"{data} from step {start} to {cfg.steps} into {cfg.run_dir}"
                  + (f" with {group.world} processes" if group.active else "") + (f"; {mode}" if mode else ""))
    return bar


def restore(run_dir: Path, state: dict, cfg: Config, nets: torch.nn.Module, optimizer: torch.optim.Optimizer,
            group: Group) -> tuple[int, History]:
    """The weights, optimizer state and this process's random state of ``run_dir``'s checkpoint ``state``,
    restored; returns its step and the history up to that step."""
    if len(state["rng"]) != group.world:
        raise UserError(f"the checkpoint was written by {len(state['rng'])} process(es); resume it with as many, "
                        f"not {group.world}")
    restore_nets(nets, state)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"][group.rank])
    history = History.load(run_dir / HISTORY, cfg.levels, upto_step=state["step"])
    if group.is_main:  # a kill during a write leaves its temporary file: the resumed run, checked, no longer needs it
        for target in (CHECKPOINT, HISTORY, CONFIG_FILE):
            remove_leftovers(run_dir / target)
    return state["step"], history


def start_run_dir(run_dir: Path, cfg: Config) -> None:
    """A run directory holding only the new run's config."""
    run_dir.mkdir(parents=True, exist_ok=True)
    # An overwritten run's files must not outlive its config (nor its TensorBoard curves mix with the new run's).
    for stale in (CHECKPOINT, HISTORY, *(path.name for path in run_dir.glob(EVENT_FILES))):
        (run_dir / stale).unlink(missing_ok=True)
    write_text(run_dir / CONFIG_FILE, cfg.to_json())


class ElboModule(torch.nn.Module):
    """The packed ELBO terms of a batch as a module, so that DistributedDataParallel can average gradients.
    ``autocast_cache``: off under a CUDA graph, whose replays must not reuse casts cached at the capture."""

    def __init__(self, nets: torch.nn.Module, model, guide, cfg: Config, autocast_cache: bool = True):
        super().__init__()
        self.nets, self.model, self.guide, self.cfg, self.autocast_cache = nets, model, guide, cfg, autocast_cache

    def forward(self, video: torch.Tensor, kl_scale: float | torch.Tensor) -> torch.Tensor:
        with autocast(self.cfg.precision, video.device, cache=self.autocast_cache):
            return elbo_terms(self.model, self.guide, video, self.nets, self.cfg, kl_scale).pack()


class StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step and save; a second SIGINT stops at once."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        try:
            previous = {sig: signal.signal(sig, self) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread: signals cannot be caught here
            previous = {}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class StepLog:
    """The logged values of each step (``TrainStep``'s: ELBO terms, gradient norm, finite flag), kept on the device
    and read back into the history every few steps: reading a value back makes the host wait for the step. A step
    whose loss or gradient norm is not finite has already been skipped inside the step (no update); ``flush`` counts
    it against ``--max-bad-steps`` (``BadSteps``). A flush comes before every save, so a checkpoint is never written
    past a step the limit would refuse."""

    def __init__(self, history: History, group: Group, bad_steps: "BadSteps"):
        self.history, self.group, self.bad_steps = history, group, bad_steps
        self.pending: list[tuple[int, float, torch.Tensor]] = []  # (step, kl scale, values still on the device)

    def add(self, step: int, scale: float, values: torch.Tensor) -> None:
        self.pending.append((step, scale, values))

    def flush(self, report=print) -> list[Row]:
        """The pending steps' values, averaged over the processes, into the history (one synchronisation), and
        returned; each skipped step ``report``ed, or NumericalError past the limit."""
        if not self.pending:
            return []
        values = self.group.mean(torch.stack([values for _, _, values in self.pending])).cpu().numpy()
        rows = [to_row(step, scale, row) for (step, scale, _), row in zip(self.pending, values)]
        skipped = [row for row, finite in zip(rows, values[:, -1]) if finite < 1]
        self.pending.clear()
        for row in skipped:
            message = self.bad_steps.skip(describe_failure(row))
            if self.group.is_main:
                report(message)
        self.history.extend(rows)
        return rows


def to_row(step: int, scale: float, values: np.ndarray) -> Row:
    """The history row of a step's values: ``ElboTerms.pack``'s, the gradient norm, the finite flag."""
    terms = ElboTerms.unpack(values[:-2])
    return Row(step=step, loss=float(terms.loss), reconstruction=float(terms.reconstruction),
               grad_norm=float(values[-2]), kl_scale=scale, kl=terms.kl)


class BadSteps:
    """Up to ``limit`` steps with a non-finite loss or gradient are skipped (no update), ``count`` of them already;
    one more stops training."""

    def __init__(self, limit: int, count: int = 0):
        self.limit, self.count = limit, count

    def skip(self, failure: str) -> str:
        """Count a bad step; its message for the user, or NumericalError past the limit."""
        self.count += 1
        if self.count > self.limit:
            raise NumericalError(failure)
        return f"skipped: {failure} ({self.count} of at most {self.limit})"


def describe_failure(row: Row) -> str:
    """Which logged value of ``row`` went non-finite."""
    bad = ["reconstruction"] if not np.isfinite(row.reconstruction) else []
    bad += [f"KL of level {level}" for level, value in enumerate(row.kl, start=1) if not np.isfinite(value)]
    if not bad:
        bad.append("loss" if not np.isfinite(row.loss) else "gradient norm")
    return f"non-finite {', '.join(bad)} at step {row.step}"


def postfix(row: Row, watching: str = "") -> str:
    """The progress bar's summary of the last step, and what the last preview cost."""
    kls = " ".join(f"kl{level}={value:.3g}" for level, value in enumerate(row.kl, start=1))
    return f"loss={row.loss:.4g} rec={row.reconstruction:.4g} {kls}" + (f" {watching}" if watching else "")
