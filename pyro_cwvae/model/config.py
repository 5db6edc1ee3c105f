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

from pyro_cwvae.data.moving_mnist import SPEEDUPS
from pyro_cwvae.model.clock import Clock
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.reading import MAX_CONFIG_BYTES, printable, regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, published separately before Python 3.11
    import tomli as tomllib


def setting(default: Any, help: str, within: Optional[tuple[float, float]] = None) -> Any:
    """A ``Config`` field: its default, the help of its command-line option and, for a number, the range ``within``
    that ``validate`` accepts (the help states it)."""
    if within is not None:
        help = f"{help} Range {shown(within[0])} to {shown(within[1])}."
    return dataclasses.field(default=default, metadata={"help": help, "within": within})


def shown(value: Any) -> str:
    """``value`` as a one-line message shows it: a number in full (%g from 12 digits on), anything else as its repr
    without control characters, cut at 40 characters; never an error, however large or deep the value (an integer of
    5000 digits, a list nested 100000 deep)."""
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    try:
        large = isinstance(value, int) and not isinstance(value, bool) and not -10**12 < value < 10**12
        text = f"{value:g}" if isinstance(value, float) or large else repr(value)
    except (OverflowError, ValueError, RecursionError):
        return f"a value too large to show ({type(value).__name__})"
    text = printable(text)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass
class Config:
    # MODEL --------------------------------------------------------------------------------------------------
    levels: int = setting(3, "Levels of latent chains L.", (1, 16))
    factor: int = setting(6, "Temporal abstraction factor k: each level ticks k times slower than the one below.",
                          (1, 64))
    z_size: int = setting(20, "Size of the stochastic state z_t^l of each level.", (1, 4096))
    h_size: int = setting(200, "Size of the deterministic (GRU) state h_t^l of each level.", (1, 8192))
    embed_size: int = setting(200, "Hidden width of the dense layers of each level's cell.", (1, 8192))
    enc_dense_size: int = setting(1000, "Hidden width of the frame-embedding stacks of levels 2 and above.",
                                  (1, 16384))
    enc_dense_layers: int = setting(3, "Dense layers per frame-embedding stack.", (1, 32))
    min_std: float = setting(1e-4, "Floor on the stddev of the prior and the posterior.", (1e-8, 1.0))
    dec_std: float = setting(1.0, "Fixed stddev of the Normal likelihood p(x_t | s_t^1).", (1e-4, 100.0))
    channels: int = setting(1, "Image channels: 1 (gray) or 3 (RGB); frames are 64x64.")
    # DATA ---------------------------------------------------------------------------------------------------
    dataset: str = setting("mmnist", "mmnist | gqn | minerl | kth; with no --config it also picks the preset "
                                     "(none: the demo on generated Moving MNIST).")
    data_dir: Optional[str] = setting(None, "The unpacked archive (mmnist without it: generated on the fly).")
    seq_len: int = setting(100, "Frames per training sequence.", (1, 100_000))
    speed: float = setting(1.0, "Generated Moving MNIST only: digit speed multiplier (Section 3.9).", SPEEDUPS)
    workers: int = setting(1, "Data-loading worker processes (0: load in the training process).", (0, 256))
    # TRAIN --------------------------------------------------------------------------------------------------
    steps: int = setting(100_000, "Optimisation steps in total (a resumed run continues up to this).", (1, 10**9))
    batch_size: int = setting(50, "Sequences per batch (all processes together); with --seq-len and the sizes, one "
                                  "training step may need at most 256 GiB.", (1, 100_000))
    lr: float = setting(3e-4, "Adam learning rate.", (1e-8, 1.0))
    adam_eps: float = setting(1e-4, "Adam epsilon (Keras convention, as the reference).", (1e-12, 1.0))
    clip_norm: float = setting(10_000.0, "Global gradient-norm clip.", (1e-6, 1e9))
    elbo: str = setting("trace", "trace: Trace_ELBO (Monte-Carlo KL); meanfield: TraceMeanField_ELBO (analytic KL, "
                                 "as the official code; the dataset presets).")
    kl_warmup: int = setting(0, "Steps of linear KL annealing from 0 to 1 (0: none, as in the paper).", (0, 10**9))
    # KL shaping of the official code (off there and here by default); see elbo.py. They change the gradients only.
    kl_balance: Optional[float] = setting(None, "Share of each level's KL gradient that trains the posterior; the "
                                                "rest trains the prior (official kl_grad_post_perc).", (0.0, 1.0))
    free_nats: Optional[float] = setting(None, "Nats per sequence and level that the KL term leaves free.",
                                         (0.0, 1e6))
    kl_beta: Optional[list[float]] = setting(None, "Weights of the levels' KL terms, level 1 first: e.g. 1,0.5,0.5.",
                                             (0.0, 1e6))
    obs_dropout: float = setting(0.0, "Share of training frames hidden from level 1's posterior (observational "
                                      "dropout; 0: none, as in the paper); see guides/cwvae.py.", (0.0, 0.99))
    obs_dropout_span: int = setting(1, "Consecutive frames that --obs-dropout hides or shows together (6: whole "
                                       "steps of level 2 at k 6).", (1, 100_000))
    seed: int = setting(0, "Seed of the weights, the noise and the batches.", (0, 2**32 - 1))
    device: str = setting("auto", "auto | cpu | cuda | cuda:N.")
    precision: str = setting("fp32", "fp32 | tf32 (CUDA) | bf16 (autocast); see devices.py.")
    compile: str = setting("none", "none | default | max-autotune: torch.compile of the networks; see devices.py.")
    cuda_graph: str = setting("auto", "auto | on | off: capture the training step whole as a CUDA graph and replay it "
                                      "(auto: on for a CUDA device with --compile none and one process). A program "
                                      "that reads tensor values on the host cannot be captured: use off; see "
                                      "README, Writing a variant.")
    deterministic: bool = setting(False, "Deterministic GPU kernels, so that a resumed GPU run equals an "
                                         "uninterrupted one bit for bit; see devices.py.")
    model: Optional[str] = setting(None, "A model program file (default: the packaged models/cwvae.py).")
    guide: Optional[str] = setting(None, "A guide program file (default: the packaged guides/cwvae.py).")
    # OUTPUT -------------------------------------------------------------------------------------------------
    run_dir: str = setting("runs/default", "Where the run is written (fit's default: runs/<preset>-<time>).")
    checkpoint_every: int = setting(100, "Steps between checkpoints (and history writes).", (1, 10**9))
    tensorboard: str = setting("auto", "auto | on | off: TensorBoard event files in the run directory (auto: when the "
                                       "tensorboard extra is installed); watch with `tensorboard --logdir runs`.")
    preview_every: int = setting(2500, "Steps between previews: open-loop predictions of a few fixed test videos, "
                                       "scored against the baselines into history.nc and shown in TensorBoard "
                                       "(0: none).", (0, 10**9))
    context: int = setting(36, "Frames the guide filters before an open-loop rollout (rollout's default).",
                           (1, 100_000))

    @property
    def clock(self) -> Clock:
        return Clock(self.levels, self.factor)

    @property
    def state_size(self) -> int:
        """Size of the state [z, h] handed down to the level below and to the decoder."""
        return self.z_size + self.h_size

    def validate(self) -> "Config":
        """Check every field and the rules between them; raise UserError with one line naming the option. Every number
        is checked against its range first, so that nothing after works on an unbounded value (the top level's period
        ``factor ** (levels - 1)``, the memory estimate)."""
        for field in dataclasses.fields(self):
            value, within = getattr(self, field.name), field.metadata.get("within")
            if within is not None and isinstance(value, (int, float)):
                check_range(field.name, value, *within)
        if self.channels not in (1, 3):
            raise UserError(f"--channels must be 1 or 3, got {self.channels}")
        for name, allowed in (("precision", PRECISIONS), ("compile", COMPILE_MODES), ("elbo", ELBOS),
                              ("cuda_graph", CUDA_GRAPH_MODES), ("tensorboard", TENSORBOARD_MODES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{option(name)} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        low, high = FIELD_RANGES["kl_beta"]
        if self.kl_beta is not None and (len(self.kl_beta) != self.levels
                                         or not all(low <= weight <= high for weight in self.kl_beta)):
            raise UserError(f"--kl-beta needs one non-negative weight per level ({self.levels}), each at most "
                            f"{shown(high)}, got {shown(self.kl_beta)}")
        for kind in ("model", "guide"):
            if getattr(self, kind) is not None and not getattr(self, kind).endswith(".py"):
                raise UserError(f"--{kind} {shown(getattr(self, kind))} is not a Python file (.py)")
        if self.seq_len < self.clock.top_period:
            raise UserError(f"--seq-len {self.seq_len} is shorter than one step of the top level "
                            f"({self.factor}**{self.levels - 1} = {self.clock.top_period} frames)")
        check_memory(self)
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
        unknown = sorted(printable(key) if isinstance(key, str) else shown(key) for key in set(values) - FIELDS)
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        hints = typing.get_type_hints(cls)
        return cls(**{name: conform(name, value, hints[name]) for name, value in values.items()})

    def replace(self, **changes: Any) -> "Config":
        return self.from_dict({**self.to_dict(), **changes})


CONFIG_FILE = "config.json"  # the resolved config in a run directory (a valid --config file)
ELBOS = ("trace", "meanfield")
PRECISIONS = ("fp32", "tf32", "bf16")
COMPILE_MODES = ("none", "default", "max-autotune")
CUDA_GRAPH_MODES = ("auto", "on", "off")
TENSORBOARD_MODES = ("auto", "on", "off")
FIELDS = {f.name for f in dataclasses.fields(Config)}
FIELD_RANGES = {f.name: f.metadata["within"] for f in dataclasses.fields(Config) if f.metadata.get("within")}
MEMORY_CAP = 256 << 30
"""The most memory one training step may need (all processes together): a batch, sequence length or model that needs
more is refused before anything is allocated."""
FRAME_VALUES = 250_000
"""Values autograd keeps per frame for the convolutional encoder and decoder of a 64x64 frame: about 1 MiB of float32,
as measured for the reference model on a CPU."""
CONV_WEIGHTS = 4_250_000
"""Weights of the convolutional encoder and decoder."""


def check_range(name: str, value: float, low: float, high: float) -> None:
    """UserError naming option ``name`` unless ``low <= value <= high`` (NaN never is)."""
    if low <= value <= high:
        return
    if value < low and low in (0, 1):
        rule = "must not be negative" if low == 0 else "must be at least 1"
    else:
        rule = f"must lie between {shown(low)} and {shown(high)}"
    raise UserError(f"--{option(name)} {rule}, got {shown(value)}")


def training_bytes(cfg: Config) -> tuple[int, int]:
    """About how many bytes one training step of ``cfg`` needs: for the weights with their gradients and Adam's two
    moments, and for the activations autograd keeps for the whole batch (the convolutional feature maps and the
    embedding stacks' outputs of every frame, each level's states at its steps). 1024: the features of a frame."""
    z, h, e, d, n, levels = cfg.z_size, cfg.h_size, cfg.embed_size, cfg.enc_dense_size, cfg.enc_dense_layers, cfg.levels
    cell = (2 * z + h) * e + 3 * h * (e + h) + h * e + 2 * e * z + (h + 1024) * e + e * e + 2 * e * z
    stack = 1024 * d + (n - 2) * d * d + d * 1024 if n > 1 else 1024 * 1024
    weights = levels * cell + (levels - 1) * stack + (z + h) * 1024 + CONV_WEIGHTS
    steps = sum(cfg.clock.num_steps(level, cfg.seq_len) for level in range(1, levels + 1))
    frame = FRAME_VALUES + (levels - 1) * (2 * (n - 1) * d + 1024)
    return 16 * weights, 4 * cfg.batch_size * (cfg.seq_len * frame + steps * 8 * (z + h + e))


def check_memory(cfg: Config) -> None:
    """UserError when one training step of ``cfg`` needs more than ``MEMORY_CAP`` (``training_bytes``)."""
    weights, activations = training_bytes(cfg)
    if weights + activations <= MEMORY_CAP:
        return
    if activations >= weights:
        what = f"--batch-size {cfg.batch_size} x --seq-len {cfg.seq_len}"
    else:
        what = (f"a model of --levels {cfg.levels}, --h-size {cfg.h_size}, --embed-size {cfg.embed_size} and "
                f"--enc-dense-size {cfg.enc_dense_size} x --enc-dense-layers {cfg.enc_dense_layers}")
    raise UserError(f"{what} needs about {gib(weights + activations)} for one training step (weights, gradients and "
                    f"Adam moments {gib(weights)}, activations {gib(activations)}), more than the {gib(MEMORY_CAP)} "
                    f"pyro-cwvae accepts")


def gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def conform(name: str, value: Any, hint: Any) -> Any:
    """``value`` as config field ``name`` of type ``hint`` holds it (an integer is a number too); UserError if not."""
    try:
        return _conformed(value, hint)
    except (TypeError, OverflowError):  # OverflowError: an integer too large for a float
        raise UserError(f"config key {name!r} must be {_kind(hint)}, got {shown(value)} ({type(value).__name__})"
                        ) from None


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
    path = regular_file(path, MAX_CONFIG_BYTES, "config file")
    try:
        text = path.read_text()
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:  # decode errors are ValueErrors
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
