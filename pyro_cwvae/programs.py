"""Load the model and guide programs: the packaged defaults, or any Python file that defines them."""
from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import UserError


@dataclass
class Program:
    fn: Callable
    path: str  # where it was loaded from
    source: str  # the file's text, recorded in checkpoints


def load_program(kind: str, path: Optional[str]) -> Program:
    """Load the function ``kind`` ("model" or "guide") from ``path``, or the packaged default when None."""
    if path is None:
        module = importlib.import_module(f"pyro_cwvae.{kind}s.cwvae")
        return Program(getattr(module, kind), inspect.getsourcefile(module), inspect.getsource(module))
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--{kind} {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"pyro_cwvae_user_{kind}_{abs(hash(file.resolve()))}", file)
    module = importlib.util.module_from_spec(spec)
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in a shared run
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # a user's file may fail in any way: report it in one line
        raise UserError(f"--{kind} {path} failed to load: {type(error).__name__}: {error}") from error
    finally:
        sys.dont_write_bytecode = writes_bytecode
    fn = getattr(module, kind, None)
    if not callable(fn):
        raise UserError(f"--{kind} {path} defines no function named '{kind}'")
    return Program(fn, str(file), file.read_text())


def load_programs(model_path: Optional[str], guide_path: Optional[str]) -> tuple[Program, Program]:
    return load_program("model", model_path), load_program("guide", guide_path)


def check_programs_match(state: dict, programs: tuple[Program, Program]) -> None:
    """Refuse a checkpoint whose model or guide source differs from the programs loaded now."""
    for kind, program in zip(("model", "guide"), programs):
        saved = state["programs"][kind]
        if saved["source"] != program.source:
            raise UserError(f"the {kind} program {program.path} differs from the one the checkpoint was trained "
                            f"with ({saved['path']}): pass the same --{kind} file")
