"""Training: stochastic variational inference on the model and guide programs.

Each step estimates the negative ELBO of a batch with Pyro's estimator (``elbo.py``: Trace_ELBO by default,
TraceMeanField_ELBO with analytic KLs as an option), back-propagates, clips the global gradient norm as the
reference does, and takes an Adam step. The run directory holds the config, the latest checkpoint and the
history, each written atomically; ``resume`` continues from the checkpoint exactly where an uninterrupted run
would have been.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyro
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from .accel import autocast, compile_nets, set_matmul_precision
from .atomic import remove_leftovers, write_text
from .checkpoint import CHECKPOINT, load_checkpoint, restore_nets, rng_state, save_checkpoint, set_rng_state
from .config import CONFIG_FILE, Config, kl_scale
from .data import VideoDataset
from .data.loader import train_batches
from .distributed import Group, Shard, join, leave
from .elbo import elbo_terms
from .errors import UserError
from .history import HISTORY, History
from .nets import CWVAENets
from .optim import KerasAdam
from .programs import Program, load_programs

LOG_EVERY = 10  # steps between reading the logged terms back from the device


class NumericalError(RuntimeError):
    """The loss or the gradients stopped being finite; the last good checkpoint is kept."""


@dataclass
class FitResult:
    run_dir: Path
    step: int
    history: History
    nets: CWVAENets
    rank: int = 0  # this process's rank when several train together
    interrupted: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA device")
    return device


def check_programs_match(state: dict, programs: tuple[Program, Program]) -> None:
    """Refuse a checkpoint whose model or guide source differs from the programs loaded now."""
    for kind, program in zip(("model", "guide"), programs):
        saved = state["programs"][kind]
        if saved["source"] != program.source:
            raise UserError(f"the {kind} program {program.path} differs from the one the checkpoint was trained "
                            f"with ({saved['path']}): pass the same --{kind} file")


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
            yield self
            return
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class ElboModule(torch.nn.Module):
    """The packed ELBO terms of a batch as a module, so that DistributedDataParallel can average gradients."""

    def __init__(self, nets: CWVAENets, model, guide, cfg: Config):
        super().__init__()
        self.nets, self.model, self.guide, self.cfg = nets, model, guide, cfg

    def forward(self, video: torch.Tensor, kl_scale: float) -> torch.Tensor:
        with autocast(self.cfg.precision, video.device):
            return elbo_terms(self.model, self.guide, video, self.nets, self.cfg, kl_scale).pack()


def fit(cfg: Config, dataset: VideoDataset, *, resume: bool = False, max_bad_steps: int = 0,
        progress: bool = True) -> FitResult:
    """Train ``cfg`` on ``dataset`` into ``cfg.run_dir`` (a new one, or the one to resume).

    Under ``torchrun`` every process calls this; each trains on its shard of the batches (see distributed.py).
    """
    group, device_name = join(cfg.device)
    try:
        result = _fit(cfg, dataset, group, resolve_device(device_name), resume, max_bad_steps, progress)
    except BaseException:
        leave(group)  # without waiting: the other processes may never get this far
        raise
    # Every process is done with its collectives (rank 0 with its last save) before any tears the group down:
    # a process leaving early can abort at exit in the communication library's threads.
    group.barrier()
    leave(group)
    return result


def _fit(cfg, dataset, group: Group, device: torch.device, resume, max_bad_steps, progress) -> FitResult:
    run_dir = Path(cfg.run_dir)
    set_matmul_precision(cfg.precision, device)
    programs = load_programs(cfg.model, cfg.guide)
    if dataset.channels != cfg.channels:
        raise UserError(f"the {dataset.name} data has {dataset.channels} channel(s) but the config says {cfg.channels}")
    if group.active:
        dataset = Shard(dataset, group, cfg.batch_size)

    pyro.clear_param_store()
    if not resume:
        pyro.set_rng_seed(cfg.seed)  # before building the networks: the seed fixes the initial weights too
    nets = CWVAENets(cfg).to(device)
    optimizer = KerasAdam(nets.parameters(), lr=cfg.lr, eps=cfg.adam_eps)  # the reference's Keras Adam
    if resume:
        state = load_checkpoint(run_dir)
        check_programs_match(state, programs)
        if len(state["rng"]) != group.world:
            raise UserError(f"the checkpoint was written by {len(state['rng'])} process(es); resume it with as many, "
                            f"not {group.world}")
        restore_nets(nets, state)
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
        history = History.load(run_dir / HISTORY, cfg.levels, upto_step=start)
        set_rng_state(state["rng"][group.rank])
        if group.is_main:  # a kill during a write leaves its temporary file: the resumed run no longer needs it
            for target in (CHECKPOINT, HISTORY):
                remove_leftovers(run_dir / target)
    else:
        pyro.set_rng_seed(cfg.seed + group.rank)  # the sampling noise: one stream per process
        start, history = 0, History(cfg.levels)
        if group.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (CHECKPOINT, HISTORY):  # an overwritten run's files must not outlive its config
                (run_dir / stale).unlink(missing_ok=True)
            write_text(run_dir / CONFIG_FILE, cfg.to_json())
    group.barrier()

    compile_nets(nets, cfg.compile)
    elbo = ElboModule(nets, programs[0].fn, programs[1].fn, cfg)
    if group.active:
        elbo = DistributedDataParallel(elbo, device_ids=[device] if device.type == "cuda" else None)
    attrs = {"config": cfg.to_json(), "elbo": cfg.elbo}  # which estimator the losses come from

    def save(step: int) -> None:
        rng = group.gather(rng_state())  # every process's random state, so a resume continues each stream
        if group.is_main:
            # History first: if a kill lands between the two writes, the history runs ahead of the checkpoint
            # and a resume drops the extra rows; the other order would leave a gap.
            history.save(run_dir / HISTORY, attrs)
            save_checkpoint(run_dir, step=step, cfg=cfg, nets=nets, optimizer=optimizer, programs=programs, rng=rng)

    pending: list[tuple[int, float, torch.Tensor]] = []  # (step, kl scale, terms still on the device)
    bad_steps = 0

    # Reading a value back from the device makes the host wait for the step. Skipping bad steps needs the
    # verdict before each update; otherwise it is read at the next flush, which always comes before a save,
    # so a non-finite step is never written to a checkpoint.
    check_each_step = max_bad_steps > 0

    def flush() -> None:
        """Read the pending steps' terms back from the device into the history (one synchronisation)."""
        if pending:
            values = group.mean(torch.stack([terms for _, _, terms in pending])).cpu().numpy()
            steps, scales = zip(*[(step, scale) for step, scale, _ in pending])  # values: loss, rec, grad norm, kl
            if not check_each_step:
                for step, row in zip(steps, values):
                    if not np.isfinite(row[[0, 2]]).all():
                        raise NumericalError(describe_failure(step, row))
            history.extend(np.column_stack([steps, values[:, :3], scales, values[:, 3:]]))
            pending.clear()

    batches = train_batches(dataset, start, cfg.steps, cfg.batch_size, cfg.seq_len, cfg.seed,
                            workers=cfg.workers, pin_memory=device.type == "cuda")
    show = progress and group.is_main
    bar = tqdm(total=cfg.steps, initial=start, disable=not show, desc="fit", unit="step", dynamic_ncols=True)
    if show:
        bar.write(f"{'resuming' if resume else 'training'} a {cfg.levels}-level CW-VAE (k={cfg.factor}) on "
                  f"{dataset.name} from step {start} to {cfg.steps} into {run_dir}"
                  + (f" with {group.world} processes" if group.active else ""))
    stop = StopRequest()
    try:
        # Pyro's per-site checks cost time in the hot loop; the tests run the programs with them on.
        with stop.installed(), pyro.validation_enabled(False):
            for step in range(start, cfg.steps):
                video = next(batches).to(device, non_blocking=True).float().div_(255.0)
                scale = kl_scale(step, cfg)
                packed = elbo(video, scale)
                optimizer.zero_grad(set_to_none=True)
                packed[-1].backward()  # the objective: the loss, or its KL-shaped version
                grad_norm = torch.nn.utils.clip_grad_norm_(nets.parameters(), cfg.clip_norm)
                logged = torch.cat([packed[:2], grad_norm[None], packed[2:-1]]).detach()
                finite = bool(torch.isfinite(logged[[0, 2]]).all()) if check_each_step else True
                bad, stopping = group.any(not finite, stop.requested, device=device)
                if bad:
                    bad_steps += 1
                    message = describe_failure(step + 1, group.mean(logged).cpu().numpy())
                    if bad_steps > max_bad_steps:
                        raise NumericalError(message)
                    bar.write(f"skipped: {message} ({bad_steps} of at most {max_bad_steps})")
                    optimizer.zero_grad(set_to_none=True)
                else:
                    optimizer.step()
                pending.append((step + 1, scale, logged))
                bar.update(1)
                done = step + 1
                if done % LOG_EVERY == 0 or done == cfg.steps:
                    flush()
                    bar.set_postfix_str(postfix(history.last(), cfg.levels), refresh=False)
                if done % cfg.checkpoint_every == 0 or done == cfg.steps or stopping:
                    flush()
                    save(done)
                if stopping:
                    if group.is_main:
                        bar.write(f"stopped at step {done}: checkpoint saved in {run_dir}")
                    return FitResult(run_dir, done, history, nets, group.rank, interrupted=True)
    finally:
        bar.close()
    return FitResult(run_dir, cfg.steps, history, nets, group.rank)


def describe_failure(step: int, logged: np.ndarray) -> str:
    """Which term went non-finite at ``step``, from its logged row [loss, reconstruction, grad norm, KLs]."""
    bad = ["reconstruction"] if not np.isfinite(logged[1]) else []
    bad += [f"KL of level {level}" for level, value in enumerate(logged[3:], start=1) if not np.isfinite(value)]
    if not bad:
        bad.append("loss" if not np.isfinite(logged[0]) else "gradient norm")
    return f"non-finite {', '.join(bad)} at step {step}"


def postfix(row: np.ndarray, levels: int) -> str:
    kls = " ".join(f"kl{level}={row[4 + level]:.3g}" for level in range(1, levels + 1))
    return f"loss={row[1]:.4g} rec={row[2]:.4g} {kls}"
