"""docs/analysis.md runs as written: its Python blocks in order in one namespace, then its pyro-cwvae commands,
against a tiny 3-level run in runs/demo (so --swap-levels 3 exists)."""
import re
import shlex
from pathlib import Path

import matplotlib
import pytest
from typer.testing import CliRunner

from pyro_cwvae.cli.app import app
from pyro_cwvae.model.config import Config
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.training.loop import fit

DOC = Path(__file__).resolve().parents[1] / "docs" / "analysis.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def commands(text: str) -> list[list[str]]:
    """The indented ``pyro-cwvae ...`` lines of the doc, continuation lines joined, as argument lists."""
    joined = re.sub(r"\\\n\s+", "", text)
    return [shlex.split(line)[1:] for line in re.findall(r"^    (pyro-cwvae .*)$", joined, flags=re.M)]


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
    """A working directory with a 2-step tiny 3-level run in runs/demo."""
    from tests.conftest import TINY

    monkeypatch.chdir(tmp_path)
    cfg = Config(**{**TINY, "levels": 3, "steps": 2}, run_dir="runs/demo")
    fit(cfg, GeneratedMovingMNIST(), progress=False)
    return tmp_path


def test_the_doc_has_code_to_run():
    text = DOC.read_text()
    assert len(python_blocks(text)) >= 5
    assert ["rollout", "--run", "runs/demo", "--horizon", "48", "--samples", "3", "--sequences", "3",
            "--swap-levels", "3", "--from-sequence", "0", "--out", "runs/demo/swap3.nc"] in commands(text)


def test_analysis_doc_runs_against_a_tiny_run(demo_dir, capsys):
    matplotlib.use("Agg")
    text = DOC.read_text()
    namespace = {}
    for number, block in enumerate(python_blocks(text), 1):
        exec(compile(block, f"docs/analysis.md block {number}", "exec"), namespace)
    printed = capsys.readouterr().out
    assert "KL per training sequence (nats)" in printed and "levels >= 3 replayed from sequence 0" in printed
    assert (demo_dir / "runs" / "demo" / "rollout-48.nc").is_file()
    for args in commands(text):
        result = CliRunner().invoke(app, [*args, "--quiet"] if args[0] == "rollout" else args)
        assert result.exit_code == 0, (args, result.output)
    assert {"strip.png", "uncertainty.png"} <= {p.name for p in (demo_dir / "runs" / "demo" / "swap3").iterdir()}
