"""Checkpoints: everything a run needs to continue exactly, saved atomically and read without running code.

A checkpoint holds the networks, the optimizer, the step, every random-number state, the resolved config, the
model and guide source files and the package version, so that a resumed run continues bit for bit and a
checkpoint loaded against a different model, level count or image size is refused with a reason.

Run directories are shared between people, so a checkpoint is untrusted input: it is read with torch's
``weights_only`` loader (tensors and plain Python values; a pickle that names a function is refused before
anything is called), and every key, type and value is checked against what this module writes before the training
or rollout code sees it. None of these checks runs a program: a run trained with program files runs the sources
recorded in its checkpoint, only when the user trusts them (``load_trained``), and the tensors' shapes are checked
against the networks those programs build once they are loaded. Only the current format is read: an older one is
refused with the hint to convert it with ``pyro-cwvae checkpoint upgrade RUN --trust`` (``upgrade_checkpoint``,
``from_format_1``).
"""
from __future__ import annotations

import json
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyro_cwvae import __version__
from pyro_cwvae.files.atomic import atomic_path
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.reading import CHECKPOINT, MAX_CONFIG_BYTES, checkpoint_file, printable, regular_file
from pyro_cwvae.model.config import CONFIG_FILE, FIELD_RANGES, Config, shown
from pyro_cwvae.model.programs import Programs, recorded_programs

FORMAT = 2
KEYS = ("format", "version", "step", "config", "nets", "optimizer", "rng", "programs")
RNG_KEYS = ("torch", "python", "numpy")  # and "cuda" where CUDA was available
MAX_STEP = FIELD_RANGES["steps"][1]


class Invalid(ValueError):
    """A part of a checkpoint that is not what this module writes; the message says what and where."""


def rng_state() -> dict[str, Any]:
    """This process's random states (torch CPU and CUDA, Python, NumPy) as tensors and plain values."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _stored_numpy(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _stored_numpy(state: tuple) -> tuple:
    """NumPy's ``get_state()`` tuple with its key array as an int64 tensor: plain values for the safe loader."""
    name, keys, pos, has_gauss, cached_gaussian = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached_gaussian)


def _numpy_state(stored: tuple) -> tuple:
    name, keys, pos, has_gauss, cached_gaussian = stored
    return name, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached_gaussian


def save_checkpoint(run_dir: Path, *, step: int, cfg: Config, nets, optimizer, programs, rng: list) -> Path:
    """Write the checkpoint; ``rng`` holds the random state of every training process, in rank order."""
    sources = {kind: {"path": p.path, "source": p.source} for kind, p in zip(("model", "guide"), programs)}
    state = {"format": FORMAT, "version": __version__, "step": step, "config": cfg.to_dict(), "nets": nets.state_dict(),
             "optimizer": optimizer.state_dict(), "rng": rng, "programs": sources}
    return _write(Path(run_dir) / CHECKPOINT, state)


def _write(target: Path, state: dict[str, Any]) -> Path:
    with atomic_path(target) as tmp:
        torch.save(state, tmp)
    return target


def load_trained(run_dir: Path, map_location: str | torch.device = "cpu", trust_programs: bool = False
                 ) -> tuple[dict[str, Any], Programs]:
    """The checkpoint of ``run_dir`` and the programs it was trained with: the packaged ones, or the sources recorded
    in it, which run only when ``trust_programs`` (UserError naming the files otherwise); its weights and optimizer
    state checked against the networks that the programs build."""
    state = load_checkpoint(run_dir, map_location)
    path = Path(run_dir) / CHECKPOINT
    cfg = Config.from_dict(state["config"])
    programs = recorded_programs({"model": cfg.model, "guide": cfg.guide}, state["programs"], trust_programs,
                                 str(path))
    with torch.device("meta"):  # shapes only: nothing allocated, no random numbers drawn
        nets = programs.make_nets(cfg)
    try:
        _check_optimizer_fits(state["optimizer"], _check_nets_fit(state["nets"], nets))
    except Invalid as error:
        raise UserError(f"{path} is not a checkpoint pyro-cwvae can use: {error}") from None
    return state, programs


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of ``run_dir``, checked without running any program. UserError in one line when it is missing,
    truncated, holds anything but tensors and plain values, or differs from what ``save_checkpoint`` writes in any
    key or type, or holds a weight that is not finite; also when the run's config.json is damaged. Its shapes are
    checked by ``load_trained``."""
    run_dir = Path(run_dir)
    path = checkpoint_file(run_dir)
    state = checked(_read(path, map_location, trust=False), path)
    check_config_file(run_dir / CONFIG_FILE)
    if state["version"] != __version__:
        warnings.warn(f"{path} was written by pyro-cwvae {printable(state['version'])}; this is {__version__}")
    return state


def upgrade_checkpoint(run_dir: Path, trust: bool = False) -> int:
    """Rewrite the checkpoint of ``run_dir`` in the current format; return the format it had. ``trust`` reads it with
    the full pickle loader, which runs whatever code the file names: only for a file whose origin the user trusts and
    that the safe loader refuses, such as one of format 1."""
    path = checkpoint_file(run_dir)
    state = _read(path, "cpu", trust)
    found = state.get("format") if isinstance(state, dict) else None
    state = checked(from_format_1(state) if found == 1 else state, path)
    if found != FORMAT:
        _write(path, state)
    return found


def _read(path: Path, map_location, trust: bool) -> Any:
    """The checkpoint at ``path`` (a regular file: ``checkpoint_file``), read with the safe loader unless ``trust``."""
    if not zipfile.is_zipfile(path):  # torch.save's archive: anything else is not a checkpoint, whatever it holds
        raise UserError(f"cannot read checkpoint {path}: not a checkpoint archive "
                        f"({'an empty file' if path.stat().st_size == 0 else 'truncated, or another kind of file'})")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as error:
        if trust:
            raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}") from error
        raise UserError(f"{path} holds {_refused(error)}, which the safe loader does not run; if you trust where it "
                        f"came from, convert it with `pyro-cwvae checkpoint upgrade {path.parent} --trust`") from error
    except Exception as error:  # a damaged or crafted file can fail in many ways: name it, in one line
        raise UserError(f"cannot read checkpoint {path}: {_first_line(error)}") from error


FORMAT_1_NAMES = {"encoder.frames.": "encoder.conv.", "encoder.levels.": "encoder.stacks."}  # renamed since


def from_format_1(state: dict) -> dict:
    """A format-1 checkpoint (read with ``--trust``) in the current layout: NumPy's random state as a tensor, the
    parameters under their current names. What it does not recognise is left as it is, for ``checked`` to refuse."""
    try:
        rng = [{"torch": entry["pyro"]["torch"], "python": entry["pyro"]["random"],
                "numpy": _stored_numpy(entry["pyro"]["numpy"]), **{k: entry[k] for k in ("cuda",) if k in entry}}
               for entry in state["rng"]]
        nets = {next((new + name[len(old):] for old, new in FORMAT_1_NAMES.items() if name.startswith(old)), name):
                tensor for name, tensor in state["nets"].items()}
    except (KeyError, TypeError, AttributeError, ValueError):
        return state
    return {**state, "format": FORMAT, "rng": rng, "nets": nets}


def _refused(error: Exception) -> str:
    """What the safe loader refused, from its message: the function or class the file names."""
    named = re.search(r"GLOBAL ([\w.]+)", str(error)) or re.search(r"got <class '([\w.]+)'>", str(error))
    return f"a reference to {named.group(1)}" if named else "objects other than tensors and plain values"


def _first_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def checked(state: Any, path: Path) -> dict[str, Any]:
    """``state`` after checking every part; UserError naming ``path`` and the part."""
    try:
        _check_keys(state, KEYS, "the checkpoint")
        if state["format"] != FORMAT:
            raise Invalid(f"format {state['format']!r} is not one this pyro-cwvae reads ({FORMAT}); if it is an "
                          f"older one, convert it with `pyro-cwvae checkpoint upgrade {path.parent} --trust`")
        _check_type(state["version"], str, "version")
        _check_type(state["step"], int, "step")
        if not 0 <= state["step"] <= MAX_STEP:
            raise Invalid(f"step is {shown(state['step'])}, not a count of steps from 0 to {MAX_STEP}")
        _checked_config(state["config"])
        _check_programs(state["programs"])
        _check_tensors(state["nets"], "nets")
        _check_optimizer(state["optimizer"])
        for entry in _list(state["rng"], "rng"):
            _check_rng(entry)
    except Invalid as error:
        raise UserError(f"{path} is not a checkpoint pyro-cwvae can use: {error}") from None
    return state


def _check_keys(value: Any, keys: tuple[str, ...], what: str, optional: tuple[str, ...] = ()) -> None:
    if not isinstance(value, dict):
        raise Invalid(f"{what} is a {type(value).__name__}, not a dict")
    missing = [key for key in keys if key not in value]
    unknown = sorted(printable(key) if isinstance(key, str) else shown(key) for key in set(value) - set(keys)
                     - set(optional))
    if missing:
        raise Invalid(f"{what} lacks {', '.join(missing)}")
    if unknown:
        raise Invalid(f"{what} holds unknown key(s) {', '.join(unknown)}")


def _check_type(value: Any, kind: type, what: str) -> None:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise Invalid(f"{what} must be {'an integer' if kind is int else 'a string'}, got a {type(value).__name__}")


def _list(value: Any, what: str) -> list:
    if not isinstance(value, list) or not value:
        raise Invalid(f"{what} is not a non-empty list")
    return value


def _checked_config(values: Any) -> Config:
    if not isinstance(values, dict):
        raise Invalid(f"config is a {type(values).__name__}, not a dict")
    try:
        return Config.from_dict(values).validate()
    except UserError as error:
        raise Invalid(f"its config: {error}") from None


def _check_tensors(tensors: Any, what: str) -> None:
    """A dict of named tensors, every value finite."""
    if not isinstance(tensors, dict):
        raise Invalid(f"{what} is a {type(tensors).__name__}, not a dict")
    for name, tensor in tensors.items():
        _check_tensor(tensor, f"{what}.{name}")


def _check_tensor(tensor: Any, what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise Invalid(f"{what} is a {type(tensor).__name__}, not a tensor")
    if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
        raise Invalid(f"{what} holds values that are not finite")


def _check_nets_fit(nets: dict, model: torch.nn.Module) -> list[torch.Tensor]:
    """The weights of ``model`` (the networks of the checkpoint's programs and config); returns its parameters."""
    expected = model.state_dict()
    _check_keys(nets, tuple(expected), "nets")
    for name, tensor in nets.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise Invalid(f"nets.{name} is {_describe(tensor)} but the model of its config has {_describe(want)}")
    return list(model.parameters())


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {tuple(tensor.shape)}"


def _check_optimizer(optimizer: Any) -> None:
    """An optimizer state: per-parameter finite tensors or plain values, plain settings (shapes: ``load_trained``)."""
    _check_keys(optimizer, ("state", "param_groups"), "optimizer")
    for group in _list(optimizer["param_groups"], "optimizer.param_groups"):
        _check_group(group)
    indices = _indices(optimizer)
    if any(type(index) is not int for index in indices) or len(set(indices)) != len(indices):
        raise Invalid("the optimizer's parameter indices are not distinct integers")
    if not isinstance(optimizer["state"], dict):
        raise Invalid("optimizer.state is not a dict")
    for index, values in optimizer["state"].items():
        if index not in indices or not isinstance(values, dict):
            raise Invalid(f"optimizer.state holds an entry {shown(index)} for no parameter")
        _check_moments(values, f"optimizer.state[{index}]")


GROUP_RANGES = {"lr": FIELD_RANGES["lr"], "eps_hat": FIELD_RANGES["adam_eps"],
                "eps": (FIELD_RANGES["adam_eps"][0], 1e6)}
"""Adam's settings: lr and Keras' epsilon in the ranges of their options; torch's eps, which ``KerasAdam`` sets to
eps_hat / sqrt(1 - beta2^t) each step, positive and finite."""


def _check_group(group: Any) -> None:
    """An optimizer param group: a list of parameter indices and Adam's settings, plain values, in ``GROUP_RANGES``;
    betas two numbers in [0, 1)."""
    if not isinstance(group, dict) or not isinstance(group.get("params"), list):
        raise Invalid("an optimizer param group is not a dict with a list of params")
    _check_keys(group, ("params", "lr", "betas", "eps"), "an optimizer param group", optional=tuple(group))
    for key, setting in group.items():
        if key != "params" and not _plain(setting):
            raise Invalid(f"optimizer setting {shown(key)} is a {type(setting).__name__}")
    for key, (low, high) in GROUP_RANGES.items():
        if key in group and not (_number(group[key]) and low <= group[key] <= high):
            raise Invalid(f"optimizer setting {key!r} is {shown(group[key])}, not from {shown(low)} to {shown(high)}")
    betas = group["betas"]
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(_number(b) and 0 <= b < 1 for b in betas)):
        raise Invalid(f"optimizer setting 'betas' is {shown(betas)}, not two numbers in [0, 1)")


ADAM_STATE = ("step", "exp_avg", "exp_avg_sq")  # and torch's amsgrad's max_exp_avg_sq


def _check_moments(values: dict, what: str) -> None:
    """Adam's state of one parameter: a step count (a 0-dim float tensor or a number) from 0 to ``MAX_STEP`` and
    finite floating-point moments, the squared ones not negative (their shapes: ``_check_optimizer_fits``)."""
    _check_keys(values, ADAM_STATE, what, optional=("max_exp_avg_sq",))
    step = values["step"]
    count = step.item() if isinstance(step, torch.Tensor) and step.dim() == 0 and step.is_floating_point() else step
    if not (_number(count) and 0 <= count <= MAX_STEP):
        raise Invalid(f"{what}['step'] is {shown(step)}, not a count of steps from 0 to {MAX_STEP}")
    for key in sorted(values.keys() - {"step"}):
        moment = values[key]
        _check_tensor(moment, f"{what}[{key!r}]")
        if not moment.is_floating_point():
            raise Invalid(f"{what}[{key!r}] is {_describe(moment)}, not floating point")
        if key.endswith("_sq") and bool((moment < 0).any()):
            raise Invalid(f"{what}[{key!r}] holds negative values, which Adam's squared moments never are")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _indices(optimizer: dict) -> list:
    return [index for group in optimizer["param_groups"] for index in group["params"]]


def _check_optimizer_fits(optimizer: dict, parameters: list[torch.Tensor]) -> None:
    """An optimizer state (checked by ``_check_optimizer``) for exactly these parameters, its moments of their
    shapes and dtypes."""
    if sorted(_indices(optimizer)) != list(range(len(parameters))):
        raise Invalid(f"the optimizer state is not for the {len(parameters)} parameters of the model")
    for index, values in optimizer["state"].items():
        want = parameters[index]
        for key, value in values.items():
            if key != "step" and (value.shape != want.shape or value.dtype != want.dtype):
                raise Invalid(f"optimizer.state[{index}][{key!r}] is {_describe(value)}: it does not fit a parameter "
                              f"of shape {tuple(want.shape)} ({str(want.dtype).removeprefix('torch.')})")


def _plain(value: Any) -> bool:
    """A setting as optimizers store them: a number, flag, string or None, or a tuple/list of those."""
    items = value if isinstance(value, (tuple, list)) else [value]
    return all(isinstance(item, (bool, int, float, str, type(None))) for item in items)


def _check_rng(entry: Any) -> None:
    """One process's random states, each tried on a fresh generator to prove it loads."""
    _check_keys(entry, RNG_KEYS, "an rng entry", optional=("cuda",))
    try:
        torch.Generator().set_state(entry["torch"].cpu())
        random.Random().setstate(entry["python"])
        if not isinstance(entry["numpy"], tuple) or len(entry["numpy"]) != 5:
            raise Invalid("the NumPy random state is not a tuple of 5")
        np.random.RandomState().set_state(_numpy_state(entry["numpy"]))
    except Exception as error:  # each setter fails in its own way on a foreign state
        raise Invalid(f"a random state does not load: {_first_line(error)}") from None
    if "cuda" in entry and not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in entry["cuda"]):
        raise Invalid("the CUDA random states are not byte tensors")


def _check_programs(programs: Any) -> None:
    _check_keys(programs, ("model", "guide"), "programs")
    for kind, program in programs.items():
        _check_keys(program, ("path", "source"), f"programs.{kind}")
        for key, value in program.items():
            _check_type(value, str, f"programs.{kind}.{key}")


def check_config_file(path: Path) -> None:
    """A run's config.json, where there is one, must hold a valid config (the checkpoint's copy is the one used:
    a run directory with a damaged or foreign config.json is refused rather than half trusted)."""
    if not path.exists():
        return
    regular_file(path, MAX_CONFIG_BYTES, "config file")
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise UserError(f"cannot read {path} as JSON: {_first_line(error)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} holds a JSON {type(values).__name__}, not a config")
    try:
        Config.from_dict(values).validate()
    except UserError as error:
        raise UserError(f"{path}: {error}") from None


def restore_nets(nets: torch.nn.Module, state: dict[str, Any]) -> None:
    """Load the checkpoint's weights; UserError naming the first tensor that does not fit the model."""
    try:
        nets.load_state_dict(state["nets"])
    except RuntimeError as error:
        detail = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        raise UserError(f"the checkpoint's weights do not fit the configured model: {detail}") from error
