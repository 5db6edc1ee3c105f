"""One ``Config`` holds every setting of a run, with the help of its command-line option; preset files hold the
reference values of each dataset.

Values follow the public reference implementation of the paper (configs for mmnist, mazes, minerl). The field
defaults are the reference mmnist values; a preset file (``configs/<dataset>.toml``) sets what differs, with the
reason beside each value. ``pyro-cwvae fit`` has one option per field (``cli.py`` generates them from here) and
reads ``--config FILE`` (a preset file, or the ``config.json`` every run directory holds). The resolved config is
saved in every run directory and checkpoint, so rollouts rebuild exactly the trained model.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from pyro_cwvae.model.clock import Clock
from pyro_cwvae.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published separately before Python 3.11
    import tomli as tomllib


def setting(default: Any, help: str) -> Any:
    """A ``Config`` field: its default and the help of its command-line option."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Config:
    # MODEL --------------------------------------------------------------------------------------------------
    levels: int = setting(3, "Levels of latent chains L.")
    factor: int = setting(6, "Temporal abstraction factor k: each level ticks k times slower than the one below.")
    z_size: int = setting(20, "Size of the stochastic state z_t^l of each level.")
    h_size: int = setting(200, "Size of the deterministic (GRU) state h_t^l of each level.")
    embed_size: int = setting(200, "Hidden width of the dense layers of each level's cell.")
    enc_dense_size: int = setting(1000, "Hidden width of the frame-embedding stacks of levels 2 and above.")
    enc_dense_layers: int = setting(3, "Dense layers per frame-embedding stack.")
    min_std: float = setting(1e-4, "Floor on the stddev of the prior and the posterior.")
    dec_std: float = setting(1.0, "Fixed stddev of the Normal likelihood p(x_t | s_t^1).")
    channels: int = setting(1, "Image channels: 1 (gray) or 3 (RGB); frames are 64x64.")
    # DATA ---------------------------------------------------------------------------------------------------
    dataset: str = setting("mmnist", "mmnist | gqn | minerl | kth; with no --config it also picks the preset "
                                     "(none: the demo on generated Moving MNIST).")
    data_dir: Optional[str] = setting(None, "The unpacked archive (mmnist without it: generated on the fly).")
    seq_len: int = setting(100, "Frames per training sequence.")
    speed: float = setting(1.0, "Generated Moving MNIST only: digit speed multiplier (Section 3.9).")
    workers: int = setting(1, "Data-loading worker processes (0: load in the training process).")
    # TRAIN --------------------------------------------------------------------------------------------------
    steps: int = setting(100_000, "Optimisation steps in total (a resumed run continues up to this).")
    batch_size: int = setting(50, "Sequences per batch.")
    lr: float = setting(3e-4, "Adam learning rate.")
    adam_eps: float = setting(1e-4, "Adam epsilon (Keras convention, as the reference).")
    clip_norm: float = setting(10_000.0, "Global gradient-norm clip.")
    elbo: str = setting("trace", "trace: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL, "
                                 "as the official code; the dataset presets).")
    kl_warmup: int = setting(0, "Steps of linear KL annealing from 0 to 1 (0: none, as in the paper).")
    # KL shaping of the official code (off there and here by default); see elbo.py. They change the gradients only.
    kl_balance: Optional[float] = setting(None, "Share of each level's KL gradient that trains the posterior; the "
                                                "rest trains the prior (official kl_grad_post_perc).")
    free_nats: Optional[float] = setting(None, "Nats per sequence and level that the KL term leaves free.")
    kl_beta: Optional[list[float]] = setting(None, "Weight of each level's KL term, level 1 first: e.g. 1,0.5,0.5.")
    obs_dropout: float = setting(0.0, "Share of training frames hidden from level 1's posterior (observational "
                                      "dropout; 0: none, as in the paper); see guides/cwvae.py.")
    obs_dropout_span: int = setting(1, "Consecutive frames that --obs-dropout hides or shows together (6: whole "
                                       "steps of level 2 at k 6).")
    seed: int = setting(0, "Seed of the weights, the noise and the batches.")
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")
    precision: str = setting("fp32", "fp32 | tf32 (CUDA) | bf16 (autocast); see devices.py.")
    compile: str = setting("none", "none | default | max-autotune: torch.compile of the networks; see devices.py.")
    deterministic: bool = setting(False, "Deterministic GPU kernels, so that a resumed GPU run equals an "
                                         "uninterrupted one bit for bit; see devices.py.")
    model: Optional[str] = setting(None, "A model program file (default: the packaged models/cwvae.py).")
    guide: Optional[str] = setting(None, "A guide program file (default: the packaged guides/cwvae.py).")
    # OUTPUT -------------------------------------------------------------------------------------------------
    run_dir: str = setting("runs/default", "Where the run is written (fit's default: runs/<preset>-<time>).")
    checkpoint_every: int = setting(100, "Steps between checkpoints (and history writes).")
    context: int = setting(36, "Frames the guide filters before an open-loop rollout (rollout's default).")

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
                    "batch_size", "checkpoint_every", "context", "enc_dense_layers", "obs_dropout_span"]
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"--{option(name)} must be at least 1, got {getattr(self, name)}")
        for name in ["lr", "adam_eps", "clip_norm", "dec_std", "min_std", "speed"]:
            if not getattr(self, name) > 0:
                raise UserError(f"--{option(name)} must be positive, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise UserError(f"--channels must be 1 or 3, got {self.channels}")
        for name, allowed in (("precision", PRECISIONS), ("compile", COMPILE_MODES), ("elbo", ELBOS)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        for name in ["workers", "kl_warmup"]:
            if getattr(self, name) < 0:
                raise UserError(f"--{option(name)} must not be negative, got {getattr(self, name)}")
        if self.kl_balance is not None and not 0 <= self.kl_balance <= 1:
            raise UserError(f"--kl-balance must lie between 0 and 1, got {self.kl_balance}")
        if not 0 <= self.obs_dropout < 1:
            raise UserError(f"--obs-dropout must lie in [0, 1), got {self.obs_dropout}")
        if self.free_nats is not None and self.free_nats < 0:
            raise UserError(f"--free-nats must not be negative, got {self.free_nats}")
        if self.kl_beta is not None and (len(self.kl_beta) != self.levels or min(self.kl_beta) < 0):
            raise UserError(f"--kl-beta needs one non-negative weight per level ({self.levels}), got {self.kl_beta}")
        if self.seq_len < self.clock.top_period:
            raise UserError(f"--seq-len {self.seq_len} is shorter than one step of the top level "
                            f"({self.factor}**{self.levels - 1} = {self.clock.top_period} frames)")
        return self

    def warnings(self) -> list[str]:
        """Valid settings that leave part of the model untrained, each as one line for the user."""
        top = self.clock.top_period
        if self.seq_len <= top:
            # The top level's only step reads zeros (no previous state, nothing above): no gradient reaches the
            # weights of its GRU and input layer, and a rollout's later top steps run them as initialised.
            return [f"--seq-len {self.seq_len} holds one step of the top level ({top} frames), so the top level's "
                    f"transition is never trained and rollouts run it untrained after frame {top}: use "
                    f"--seq-len {2 * top} or more"]
        return []

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


CONFIG_FILE = "config.json"  # the resolved config in a run directory (a valid --config file)
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


def read_config_file(path: str | Path) -> Config:
    """The config in ``path``: a run's ``config.json`` or a TOML file like the presets (keys left out take the
    field defaults). ``UserError`` naming the file when it is unreadable, not a table, or holds a bad key."""
    path = Path(path)
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as error:  # JSON and TOML decode errors are ValueErrors
        raise UserError(f"cannot read config file {path}: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise UserError(f"config file {path} holds {type(values).__name__}, not a table of settings")
    try:
        return Config.from_dict(values)
    except UserError as error:
        raise UserError(f"config file {path}: {error}") from None


PRESET_NAMES = ("demo", "mmnist", "gqn", "minerl", "kth")


def preset_file(name: str) -> Path:
    """The packaged preset file of ``name`` (``configs/<name>.toml``): read it, or copy it as a start."""
    if name not in PRESET_NAMES:
        datasets = ", ".join(n for n in PRESET_NAMES if n != "demo")
        raise UserError(f"unknown dataset {name!r}: choose one of {datasets}")
    return Path(str(resources.files("pyro_cwvae.configs") / f"{name}.toml"))


def preset(name: str) -> Config:
    """The config of preset ``name``: ``demo`` or a dataset."""
    return read_config_file(preset_file(name))


def option(field_name: str) -> str:
    return field_name.replace("_", "-")


def kl_scale(step: int, cfg: Config) -> float:
    """Weight of the KL terms at ``step``: a linear warm-up over ``cfg.kl_warmup`` steps, then 1."""
    if cfg.kl_warmup == 0:
        return 1.0
    return min(1.0, (step + 1) / cfg.kl_warmup)
