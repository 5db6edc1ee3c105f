"""Load the model and guide programs: the packaged defaults, or any Python file that defines them."""
from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.nets import CWVAENets


@dataclass
class Program:
    fn: Callable
    path: str  # where it was loaded from
    source: str  # the file's text, recorded in checkpoints
    packaged: bool = False  # the default program of this package (models/cwvae.py, guides/cwvae.py)


def load_program(kind: str, path: Optional[str]) -> Program:
    """Load the function ``kind`` ("model" or "guide") from ``path``, or the packaged default when None."""
    return program_of(kind, path, load_module(kind, path))


def load_module(kind: str, path: Optional[str]) -> ModuleType:
    """The module of the ``kind`` program file ``path``, or of the packaged default when None."""
    if path is None:
        return importlib.import_module(f"pyro_cwvae.{kind}s.cwvae")
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
    return module


def program_of(kind: str, path: Optional[str], module: ModuleType) -> Program:
    fn = getattr(module, kind, None)
    if not callable(fn):
        raise UserError(f"--{kind} {path} defines no function named '{kind}'")
    if path is None:
        return Program(fn, inspect.getsourcefile(module), inspect.getsource(module), packaged=True)
    return Program(fn, str(path), Path(path).read_text())


@dataclass
class Programs:
    """The model and guide programs of a run, and the function that builds the networks they use."""

    model: Program
    guide: Program
    make_nets: Callable  # cfg -> the networks (torch.nn.Module) that both programs register

    def __iter__(self):
        return iter((self.model, self.guide))


def load_programs(model_path: Optional[str], guide_path: Optional[str]) -> Programs:
    """The model and guide of a run; its networks are built by ``make_nets(cfg)`` where the model file, or else
    the guide file, defines one (a variant that changes the networks), else by ``CWVAENets``. The files' sources
    are recorded in checkpoints, so ``make_nets`` is recorded with them."""
    modules = {"model": load_module("model", model_path), "guide": load_module("guide", guide_path)}
    paths = {"model": model_path, "guide": guide_path}
    defining = [kind for kind, module in modules.items() if callable(getattr(module, "make_nets", None))]
    if len(defining) > 1:
        raise UserError(f"--model {model_path} and --guide {guide_path} both define make_nets: keep one")
    make_nets = modules[defining[0]].make_nets if defining else CWVAENets
    return Programs(*(program_of(kind, paths[kind], module) for kind, module in modules.items()), make_nets)


def check_programs_match(state: dict, programs: Programs) -> None:
    """Refuse a checkpoint whose model or guide source differs from the programs loaded now. The packaged programs
    belong to this package: a run trained with an earlier version of them loads with a warning where their code
    (not only their comments and docstrings) has changed since."""
    for kind, program in zip(("model", "guide"), programs):
        saved = state["programs"][kind]
        if saved["source"] == program.source:
            continue
        if not program.packaged:
            raise UserError(f"the {kind} program {program.path} differs from the one the checkpoint was trained "
                            f"with ({saved['path']}): pass the same --{kind} file")
        if code_of(saved["source"]) != code_of(program.source):
            warnings.warn(f"the packaged {kind} program has changed since this run was trained: running the "
                          f"current one")


def code_of(source: str) -> str | None:
    """What a program's source computes: its syntax tree without docstrings (comments never reach it)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
