"""Watching a run while it trains: what a watcher is, and the loop's side of its watchers.

A watcher (TensorBoard logging, previews: ``pyro_cwvae/watch/``) is told of every logged row and may run after
any step; it must not change the training. The loop makes sure of that for any watcher: each runs without
gradients, with the networks in eval mode, and with every random state (torch CPU and CUDA, Python, NumPy) put
back as it was, so that a run trains to the same weights with and without watchers (``tests/test_watch.py``).
Watchers run in the main process only when several processes train together.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

from pyro_cwvae.model.programs import Programs
from pyro_cwvae.training.checkpoint import rng_state, set_rng_state
from pyro_cwvae.training.history import History, Row


class Watcher:
    """Looks at a run as it trains. Every method does nothing by default."""

    def started(self, step: int, programs: Programs) -> None:
        """Training starts after ``step`` steps (0, or a resumed checkpoint's) with ``programs``."""

    def logged(self, rows: list[Row], steps_per_second: float, lr: float) -> None:
        """The history rows just read back from the device, the training speed since the last call (steps per
        second of wall time, the watchers' own time left out) and the learning rate."""

    def wants(self, step: int) -> bool:
        """Whether ``after_step`` should run after ``step``: asked every step, so it must cost nothing."""
        return False

    def after_step(self, step: int, nets: torch.nn.Module) -> tuple[dict[str, float], dict[str, dict]] | None:
        """Called after the steps it ``wants``; may measure the networks (a preview) and return the values for the
        history, with their attributes (``History.add_preview``), or None."""
        return None

    def saved(self, step: int) -> None:
        """The checkpoint of ``step`` is written: a watcher writes out what it holds."""

    def close(self) -> None:
        """Training has ended (or stopped); also called on errors."""


class Watching:
    """The loop's side of its watchers: runs them without letting them change the training, adds what they measure
    to the history, and keeps the time they take apart from the training speed."""

    def __init__(self, watchers: Sequence[Watcher], history: History, optimizer: torch.optim.Optimizer, start: int,
                 programs: Programs):
        self.watchers, self.history, self.optimizer = list(watchers), history, optimizer
        for watcher in self.watchers:
            watcher.started(start, programs)
        self.since = time.perf_counter()  # the start of the steps the next ``logged`` reports
        self.watching = 0.0  # seconds the watchers took since then
        self.last_cost = ""  # what the last measuring watcher took, for the progress bar

    def logged(self, rows: list[Row]) -> None:
        if not rows:
            return
        now = time.perf_counter()
        rate = len(rows) / max(now - self.since - self.watching, 1e-9)
        for watcher in self.watchers:
            watcher.logged(rows, rate, float(self.optimizer.param_groups[0]["lr"]))
        self.watching = 0.0
        self.since = time.perf_counter()  # the watchers' time in ``logged`` is not training time either

    def after_step(self, step: int, nets: torch.nn.Module) -> None:
        for watcher in self.watchers:
            if not watcher.wants(step):  # the common case: no random state saved, no mode switched
                continue
            started = time.perf_counter()
            with untouched(nets):
                measured = watcher.after_step(step, nets)
            seconds = time.perf_counter() - started
            self.watching += seconds
            if measured is not None:
                self.history.add_preview(step, *measured)
                self.last_cost = f"preview {seconds:.1f}s"

    def saved(self, step: int) -> None:
        for watcher in self.watchers:
            watcher.saved(step)

    def close(self) -> None:
        for watcher in self.watchers:
            watcher.close()


@contextmanager
def untouched(nets: torch.nn.Module) -> Iterator[None]:
    """Run a watcher without gradients, with ``nets`` in eval mode, and with every random state put back after."""
    state, training = rng_state(), nets.training
    try:
        with torch.no_grad():
            nets.eval()
            yield
    finally:
        nets.train(training)
        set_rng_state(state)
