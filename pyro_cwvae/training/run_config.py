"""Run directories: the config a new run starts from, or the one a resumed run continues with (``run_config``, what
``pyro-cwvae fit`` and the experiments call). The ``demo`` preset is generated Moving MNIST sized to learn in minutes
on a CPU. A resumed run keeps its model and data: only the options that do not change what is learned may differ.
Program files that a run or a config file names (not the user's own ``--model``/``--guide``) run only with
``trust_programs``."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pyro_cwvae.training.checkpoint import CHECKPOINT, load_trained
from pyro_cwvae.training.distributed import launched_ranks
from pyro_cwvae.model.config import CONFIG_FILE, Config, option, preset, read_config_file
from pyro_cwvae.errors import UserError
from pyro_cwvae.model.programs import check_trusted
from pyro_cwvae.training.history import HISTORY, History

RUN_FILES = (CONFIG_FILE, CHECKPOINT, HISTORY)
CHANGEABLE_ON_RESUME = {"steps", "device", "workers", "checkpoint_every", "data_dir", "run_dir", "precision", "compile",
                        "deterministic", "cuda_graph", "tensorboard", "preview_every"}


def run_config(options: dict[str, Any], *, resume: bool, overwrite: bool = False,
               config_file: str | Path | None = None, trust_programs: bool = False) -> Config:
    """The config to train with: the resumed run's in ``options['run_dir']`` (``resume``), or a new run's from
    ``config_file`` or the dataset's preset; ``options`` holds only the options the user gave. The program files
    that the resumed run or ``config_file`` names are refused unless ``trust_programs``."""
    if resume and config_file is not None:
        raise UserError("--resume continues with the run's own config: leave out --config")
    if resume and overwrite:
        raise UserError("--resume continues the run and --overwrite starts it over: pass one of them")
    if "run_dir" not in options and launched_ranks() > 1:  # each process would pick its own time stamp
        raise UserError("--run-dir is required when several processes train together")
    if resume:
        return resume_config(options, trust_programs)
    return new_run_config(options, overwrite, config_file, trust_programs)


def new_run_config(options: dict[str, Any], overwrite: bool = False, config_file: str | Path | None = None,
                   trust_programs: bool = False) -> Config:
    """The config of a fresh run: ``config_file`` if given, else the preset of ``options['dataset']`` (the demo
    when none), then ``options`` (only the options the user gave) on top."""
    if config_file is not None:
        name, cfg = Path(config_file).stem, read_config_file(config_file)
        check_trusted({kind: getattr(cfg, kind) for kind in ("model", "guide") if kind not in options},
                      trust_programs, f"--config {config_file}", "fit would run it")
    else:
        name = options.get("dataset") or "demo"
        cfg = preset(name)
        options = {key: value for key, value in options.items() if key != "dataset"}  # the preset sets it
    if "run_dir" not in options:
        options = {**options, "run_dir": str(Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")}
    cfg = programs_found(cfg.replace(**options).validate(), options, config_file)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--run-dir {run_dir} is a file, not a folder")
    if any((run_dir / name).exists() for name in RUN_FILES) and not overwrite:
        if not (run_dir / CHECKPOINT).exists():
            raise UserError(f"{run_dir} holds a run without a checkpoint (it stopped, or is still running, before "
                            "its first): nothing to resume; pass --overwrite to start over")
        raise UserError(f"{run_dir} already holds a run: pass --resume to continue it or --overwrite to start over")
    return cfg  # the old run's files are replaced only once training starts (train.fit), never on bad input


def programs_found(cfg: Config, options: dict[str, Any], config_file: str | Path | None) -> Config:
    """``cfg`` with its program files as absolute paths, so that the run's config.json names them wherever it is
    read from; ``UserError`` naming where a path came from (an option, or the config file) if it is no file."""
    for kind in ("model", "guide"):
        if getattr(cfg, kind) is None:
            continue
        file = Path(getattr(cfg, kind)).expanduser()
        if not file.is_file():
            given = f"--{kind} {file}" if kind in options else f"{kind} = {str(file)!r} in --config {config_file}"
            relative = "" if file.is_absolute() else f" (a relative path is read from the current folder, {Path.cwd()})"
            raise UserError(f"{given}: no such file{relative}")
        cfg = cfg.replace(**{kind: str(file.resolve())})
    return cfg


def resume_config(options: dict[str, Any], trust_programs: bool = False) -> Config:
    """The config saved in the checkpoint of ``options['run_dir']``, with the changeable options applied. The run's
    files are checked in full first (the checkpoint with its programs, and the history), so that a resume refused
    changes nothing: training removes what killed writes left behind only once they pass."""
    if "run_dir" not in options:
        raise UserError("--resume needs --run-dir: the run to continue")
    run_dir = Path(options["run_dir"])
    state = load_trained(run_dir, trust_programs=trust_programs)[0]
    saved = Config.from_dict(state["config"])
    History.load(run_dir / HISTORY, saved.levels, upto_step=state["step"])
    if options.get("steps", state["step"]) < state["step"]:
        raise UserError(f"--steps {options['steps']} is fewer than the {state['step']} the run has taken: a resumed "
                        f"run trains on from its step (start a new run to train fewer)")
    for key, value in options.items():
        if key not in CHANGEABLE_ON_RESUME and not same_setting(key, value, getattr(saved, key)):
            raise UserError(f"--{option(key)} {value} differs from the resumed run's {getattr(saved, key)}: "
                            f"a resumed run keeps its model and data (start a new run to change them)")
    changes = {k: v for k, v in options.items() if k in CHANGEABLE_ON_RESUME}
    return saved.replace(**changes).validate()


def same_setting(key: str, given: Any, saved: Any) -> bool:
    """Whether an option given on resume is the run's own: a program file by the file it names (a run records the
    absolute path of a relative ``--model``)."""
    if key in ("model", "guide") and given is not None and saved is not None:
        return Path(given).expanduser().resolve() == Path(saved).expanduser().resolve()
    return given == saved
