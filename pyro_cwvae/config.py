"""One ``Config`` holds every setting of a run; presets hold the reference values of each dataset.

Values follow the public reference implementation of the paper (configs for mmnist, mazes, minerl). A preset
overrides only what differs from the field defaults; the resolved config is saved in every run directory and
checkpoint, so rollouts rebuild exactly the trained model.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, Optional

from .clock import Clock
from .errors import UserError


@dataclass
class Config:
    # MODEL --------------------------------------------------------------------------------------------------
    levels: int = 3  # L: levels of latent chains
    factor: int = 6  # k: each level ticks k times slower than the one below
    z_size: int = 20  # stochastic state z_t^l per level
    h_size: int = 200  # deterministic GRU state h_t^l per level
    embed_size: int = 200  # hidden width of the RSSM cell's dense layers
    enc_dense_size: int = 1000  # hidden width of the per-level embedding stacks (levels >= 2)
    enc_dense_layers: int = 3  # dense layers per level embedding stack
    min_std: float = 1e-4  # floor on the stddev of p and q
    dec_std: float = 1.0  # fixed stddev of the Normal likelihood p(x_t | s_t^1)
    channels: int = 1  # image channels (1 gray, 3 RGB); frames are 64x64
    # DATA ---------------------------------------------------------------------------------------------------
    dataset: str = "mmnist"  # mmnist | gqn | minerl | kth
    data_dir: Optional[str] = None  # unpacked archive; None for mmnist means generated on the fly
    seq_len: int = 100  # training chunk length in frames
    speed: float = 1.0  # generated Moving MNIST only: digit speed multiplier (Section 3.9)
    workers: int = 1  # data-loading worker processes (0 loads in the training process)
    # TRAIN --------------------------------------------------------------------------------------------------
    steps: int = 100_000  # optimisation steps in total (a resumed run continues up to this)
    batch_size: int = 50
    lr: float = 3e-4  # Adam learning rate
    adam_eps: float = 1e-4  # Adam epsilon, as in the reference
    clip_norm: float = 10_000.0  # global gradient-norm clip, as in the reference
    elbo: str = "trace"  # trace (Trace_ELBO, the package default) | meanfield (analytic KL; the dataset presets)
    kl_warmup: int = 0  # steps of linear KL annealing from 0 to 1 (0: none, as in the paper)
    # KL shaping of the official code (off there and here by default); see elbo.py. They change the gradients only:
    kl_balance: Optional[float] = None  # share of each level's KL gradient that trains q (official kl_grad_post_perc)
    free_nats: Optional[float] = None  # nats per sequence and level that the KL term does not penalise
    kl_beta: Optional[list[float]] = None  # weight of each level's KL term, level 1 first
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "fp32"  # fp32 | tf32 | bf16 (autocast); see accel.py
    compile: str = "none"  # none | default | max-autotune: torch.compile of the networks; see accel.py
    model: Optional[str] = None  # path to a model program (default: the packaged models/cwvae.py)
    guide: Optional[str] = None  # path to a guide program (default: the packaged guides/cwvae.py)
    # OUTPUT -------------------------------------------------------------------------------------------------
    run_dir: str = "runs/default"
    checkpoint_every: int = 100  # steps between checkpoints (and history writes)
    context: int = 36  # frames the guide filters before an open-loop rollout

    @property
    def clock(self) -> Clock:
        return Clock(self.levels, self.factor)

    @property
    def state_size(self) -> int:
        """Size of the state [z, h] handed down to the level below and to the decoder."""
        return self.z_size + self.h_size

    def validate(self) -> "Config":
        """Check every field and the rules between them; raise UserError with one line naming the option."""
        positive = ["levels", "factor", "z_size", "h_size", "embed_size", "enc_dense_size", "seq_len", "steps",
                    "batch_size", "checkpoint_every", "context"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ["lr", "adam_eps", "clip_norm", "dec_std", "min_std", "speed"]:
            if not getattr(self, name) > 0:
                raise UserError(f"--{option(name)} must be positive, got {getattr(self, name)}")
        if self.enc_dense_layers < 1:
            raise UserError(f"--enc-dense-layers must be at least 1, got {self.enc_dense_layers}")
        if self.channels not in (1, 3):
            raise UserError(f"channels must be 1 or 3, got {self.channels}")
        for name, allowed in (("precision", PRECISIONS), ("compile", COMPILE_MODES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.elbo not in ELBOS:
            raise UserError(f"--elbo must be one of {', '.join(ELBOS)}, got {self.elbo!r}")
        if self.workers < 0 or self.kl_warmup < 0:
            raise UserError("--workers and --kl-warmup must not be negative")
        if self.kl_balance is not None and not 0 <= self.kl_balance <= 1:
            raise UserError(f"--kl-balance must lie between 0 and 1, got {self.kl_balance}")
        if self.free_nats is not None and self.free_nats < 0:
            raise UserError(f"--free-nats must not be negative, got {self.free_nats}")
        if self.kl_beta is not None and (len(self.kl_beta) != self.levels or min(self.kl_beta) < 0):
            raise UserError(f"--kl-beta needs one non-negative weight per level ({self.levels}), got {self.kl_beta}")
        if self.seq_len < self.clock.top_period:
            raise UserError(
                f"--seq-len {self.seq_len} is shorter than one step of the top level "
                f"({self.factor}**{self.levels - 1} = {self.clock.top_period} frames)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        """A config of ``values`` (a run's file may come from anyone): UserError on an unknown key or a wrong type."""
        unknown = sorted(map(str, set(values) - FIELDS))
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: conform(name, value, hints[name]) for name, value in values.items()})

    def replace(self, **changes: Any) -> "Config":
        return self.from_dict({**self.to_dict(), **changes})


CONFIG_FILE = "config.json"  # the resolved config in a run directory
ELBOS = ("trace", "meanfield")
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("none", "default", "max-autotune")
FIELDS = {f.name for f in dataclasses.fields(Config)}


def conform(name: str, value: Any, hint: Any) -> Any:
    """``value`` as config field ``name`` of type ``hint`` holds it (an integer is a number too); UserError if not."""
    try:
        return _conformed(value, hint)
    except TypeError:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"config key {name!r} must be {_kind(hint)}, got {shown} ({type(value).__name__})") from None


def _conformed(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _conformed(value, next(arg for arg in args if arg is not type(None)))
    if origin is list and isinstance(value, (list, tuple)):
        return [_conformed(item, args[0]) for item in value]
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and isinstance(value, hint) and (hint is bool or not isinstance(value, bool)):
        return value
    if origin is None and hint not in (int, float, str, bool):
        return value  # a field type this check does not know: left to validate()
    raise TypeError(hint)


def _kind(hint: Any) -> str:
    """How a message names a field type: 'an integer', 'a list (a number each) or null', ..."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_kind(arg) for arg in args)
    if origin is list:
        return f"a list ({_kind(args[0])} each)"
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    return names.get(hint, str(hint))

# Each preset overrides the field defaults above (which are the reference mmnist values).
PRESETS: dict[str, dict[str, Any]] = {
    # The embedded default: generated Moving MNIST, small enough to learn visibly in minutes on a laptop CPU.
    # Early in training the level-1 posterior is noise-limited (its stddev shrinks slowly), so the information
    # per frame grows with the number of latent dimensions: z 64 instead of 20 makes the digits appear sooner.
    # A sharper likelihood (dec_std 0.1 instead of 1.0) lets that information in; many small steps learn more
    # in ten minutes than few large ones.
    "demo": dict(dataset="mmnist", z_size=64, seq_len=36, batch_size=4, steps=1000, lr=1e-3, dec_std=0.1,
                 checkpoint_every=100),
    # The paper's datasets train with analytic KLs, as the official loss does (TraceMeanField_ELBO: Pyro's
    # Trace_ELBO with the KL of each latent site in closed form); --elbo trace still overrides it.
    "mmnist": dict(dataset="mmnist", dec_std=1.0, channels=1, elbo="meanfield"),
    "gqn": dict(dataset="gqn", dec_std=0.1, channels=3, elbo="meanfield"),
    "minerl": dict(dataset="minerl", z_size=100, h_size=800, embed_size=800, dec_std=0.4, channels=3, lr=1e-4,
                   elbo="meanfield"),
    # KTH is not in the reference configs: mmnist sizes, gray frames, the same analytic KLs.
    "kth": dict(dataset="kth", dec_std=1.0, channels=1, elbo="meanfield"),
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(n for n in PRESETS if n != 'demo')}")
    return Config(**PRESETS[name])


def option(field_name: str) -> str:
    return field_name.replace("_", "-")


def kl_scale(step: int, cfg: Config) -> float:
    """Weight of the KL terms at ``step``: a linear warm-up over ``cfg.kl_warmup`` steps, then 1."""
    if cfg.kl_warmup == 0:
        return 1.0
    return min(1.0, (step + 1) / cfg.kl_warmup)
