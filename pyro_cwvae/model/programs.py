"""Load the model and guide programs: the packaged defaults, or any Python file that defines them.

A user's file named on the command line is the user's own code. A file named by a run (its checkpoint or a config
file someone shared) is not: ``recorded_programs`` runs the sources recorded in the checkpoint, never the file the
path names now, and only when the user says they trust them (``--trust-programs``)."""
from __future__ import annotations

import ast
import importlib
import inspect
import linecache
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from pyro_cwvae.errors import PROGRAM_MODULE, UserError
from pyro_cwvae.model.nets import CWVAENets

KINDS = ("model", "guide")


@dataclass
class Program:
    fn: Callable
    path: str  # where it was loaded from
    source: str  # the file's text, recorded in checkpoints
    packaged: bool = False  # the default program of this package (models/cwvae.py, guides/cwvae.py)


def load_program(kind: str, path: Optional[str]) -> Program:
    """Load the function ``kind`` ("model" or "guide") from ``path``, or the packaged default when None."""
    source = None if path is None else read_program(kind, path)
    return program_of(kind, path, source, load_module(kind, path, source))


def read_program(kind: str, path: str) -> str:
    """The text of the ``kind`` program file ``path``, read once: what runs is what a checkpoint records."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--{kind} {path}: no such file")
    try:
        return file.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--{kind} {path} cannot be read as Python source: {error}") from error


def load_module(kind: str, path: Optional[str], source: Optional[str]) -> ModuleType:
    """The module of the ``kind`` program ``source`` (the text of ``path``), or the packaged default when ``path`` is
    None. The source runs in a fresh module, compiled from the text itself: no bytecode is written, and the file
    is not read again."""
    if path is None:
        return importlib.import_module(f"pyro_cwvae.{kind}s.cwvae")
    module = ModuleType(f"{PROGRAM_MODULE}{kind}_{abs(hash(path))}")
    module.__file__ = path
    linecache.cache[path] = (len(source), None, source.splitlines(True), path)  # tracebacks show what ran
    try:
        exec(compile(source, path, "exec", dont_inherit=True), module.__dict__)
    except (Exception, SystemExit) as error:  # a program may fail in any way: report it in one line
        raise UserError(f"--{kind} {path} failed to load: {type(error).__name__}: {error}") from error
    return module


def program_of(kind: str, path: Optional[str], source: Optional[str], module: ModuleType) -> Program:
    fn = getattr(module, kind, None)
    if not callable(fn):
        raise UserError(f"--{kind} {path} defines no function named '{kind}'")
    if path is None:
        return Program(fn, inspect.getsourcefile(module), inspect.getsource(module), packaged=True)
    return Program(fn, str(path), source)


@dataclass
class Programs:
    """The model and guide programs of a run, and the function that builds the networks they use."""

    model: Program
    guide: Program
    make_nets: Callable  # cfg -> the networks (torch.nn.Module) that both programs register

    def __iter__(self):
        return iter((self.model, self.guide))


def load_programs(model_path: Optional[str], guide_path: Optional[str]) -> Programs:
    """The model and guide of a run from these files (None: the packaged ones); its networks are built by
    ``make_nets(cfg)`` where the model file, or else the guide file, defines one (a variant that changes the
    networks), else by ``CWVAENets``. The files' sources are recorded in checkpoints, so ``make_nets`` is recorded
    with them."""
    paths = {"model": model_path, "guide": guide_path}
    return programs_of({kind: (path, None if path is None else read_program(kind, path))
                        for kind, path in paths.items()})


def recorded_programs(paths: dict[str, Optional[str]], recorded: dict, trust: bool, where: str) -> Programs:
    """The programs a checkpoint ``where`` was trained with: the packaged ones where its config ``paths`` name none
    (with a warning where their code changed since), else the sources ``recorded`` in it, not the files the paths
    name now, and only when the user ``trust``s them: until then nothing of them runs."""
    check_trusted(paths, trust, where, "the run would run the source recorded there")
    programs = programs_of({kind: (path, None if path is None else recorded[kind]["source"])
                            for kind, path in paths.items()})
    check_programs_match({"programs": recorded}, programs)
    return programs


def check_trusted(paths: dict[str, Optional[str]], trust: bool, where: str, runs: str) -> None:
    """Refuse program files named by a file someone may have shared (``where``) unless the user ``trust``s them;
    ``runs`` says what would run."""
    named = [path for path in paths.values() if path is not None]
    if named and not trust:
        files = f"file{'s' * (len(named) > 1)} {' and '.join(named)}"
        raise UserError(f"{where} names the program {files}; {runs}: pass --trust-programs (API: "
                        f"trust_programs=True) if you trust it")


def programs_of(sources: dict[str, tuple[Optional[str], Optional[str]]]) -> Programs:
    """The programs of ``sources``: kind -> (path, its source text), (None, None) for the packaged one."""
    modules = {kind: load_module(kind, path, source) for kind, (path, source) in sources.items()}
    defining = [kind for kind, module in modules.items() if callable(getattr(module, "make_nets", None))]
    if len(defining) > 1:
        raise UserError(f"--model {sources['model'][0]} and --guide {sources['guide'][0]} both define make_nets: "
                        f"keep one")
    make_nets = modules[defining[0]].make_nets if defining else CWVAENets
    return Programs(*(program_of(kind, *sources[kind], modules[kind]) for kind in KINDS), make_nets)


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
