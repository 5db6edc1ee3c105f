"""The layout rules of README's "Where things are": stages import only the stages below them, no module imports
itself back through others, and modules and functions stay short enough to read in one sitting.

The imports are read from the source with ``ast`` (function-local imports included), not from ``sys.modules``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = [ROOT / "pyro_cwvae", ROOT / "models", ROOT / "guides", ROOT / "data"]
SCRIPTS = [ROOT / "experiments", ROOT / "benchmarks"]
STAGES = ["errors", "files", "data", "configs", "model", "models", "guides", "training", "prediction", "evaluation",
          "plots", "watch", "api", "cli", "__main__"]
"""The stages, lowest first: a module may import its own stage and those before it (``models`` and ``guides``, the
user-edited programs, sit with ``model``; ``data`` may use ``files``)."""
RANK = {**{stage: rank for rank, stage in enumerate(STAGES)}, "models": STAGES.index("model"),
        "guides": STAGES.index("model")}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    """The installed name of a product file: data/cache.py is pyro_cwvae.data.cache."""
    top = next(root for root in PRODUCT if root in path.parents)
    parts = list(path.relative_to(top).with_suffix("").parts)
    prefix = [] if top.name == "pyro_cwvae" else [top.name]
    parts = prefix + (parts[:-1] if parts[-1] == "__init__" else parts)
    return ".".join(["pyro_cwvae", *parts])


def product_files() -> list[Path]:
    return sorted(path for root in PRODUCT for path in root.rglob("*.py"))


def imports_of(path: Path, name: str) -> set[str]:
    """The pyro_cwvae modules ``path`` imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    known = {module_name(p) for p in product_files()}
    return {module for module in found if module in known and module != name}


def stage(module: str) -> str:
    """The stage of a module; the package itself (its version) is below everything."""
    return module.split(".")[1] if "." in module else "errors"


def test_every_stage_imports_only_the_stages_below_it():
    upward = []
    for path in product_files():
        name = module_name(path)
        for target in imports_of(path, name):
            if RANK[stage(target)] > RANK[stage(name)]:
                upward.append(f"{name} -> {target}")
    assert upward == []


def test_no_module_imports_itself_back():
    graph = {module_name(p): imports_of(p, module_name(p)) for p in product_files()}
    # a package's __init__ that hands names on is not an edge back: skip edges into packages' faces
    faces = {module_name(p) for p in product_files() if p.name == "__init__.py"}
    graph = {name: {t for t in targets if t not in faces} for name, targets in graph.items()}
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("root", PRODUCT + SCRIPTS, ids=lambda p: p.name)
def test_modules_and_functions_are_short(root):
    long_modules, long_functions = [], []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert long_modules == [] and long_functions == []


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks above can fail: an upward import and a long function are found in a file made to have them."""
    bad = ROOT / "pyro_cwvae" / "model" / "clock.py"
    assert imports_of(bad, "pyro_cwvae.model.clock") == set()
    crafted = tmp_path / "crafted.py"
    crafted.write_text("from pyro_cwvae.cli.app import main\n\ndef f():\n" + "    x = 1\n" * 70)
    assert imports_of(crafted, "pyro_cwvae.model.crafted") == {"pyro_cwvae.cli.app"}
    assert RANK[stage("pyro_cwvae.cli.app")] > RANK[stage("pyro_cwvae.model.crafted")]
    tree = ast.parse(crafted.read_text())
    function = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef))
    assert function.end_lineno - function.lineno + 1 > MAX_FUNCTION_LINES


def test_the_prediction_package_hands_on_each_name_from_its_module():
    """``pyro_cwvae.prediction`` imports its names on first use (so that the command line's help needs no torch):
    each is its module's own object, and the package lists them."""
    import importlib

    import pyro_cwvae.prediction as prediction

    for module, names in prediction.HOMES.items():
        home = importlib.import_module(f"pyro_cwvae.prediction.{module}")
        for name in names:
            assert getattr(prediction, name) is getattr(home, name), name
    assert set(prediction.__all__) <= set(dir(prediction))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        prediction.nothing
