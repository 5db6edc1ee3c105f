"""A shared run never runs its code unasked: a run (or a config file) that names program files is refused in one
line naming the files and ``--trust-programs`` before anything of them runs, and with the flag the sources recorded
in the checkpoint run, never what the files hold now. Refusals change nothing, in the run folder or the data
folder."""
import inspect
import shutil
import sys

import numpy as np
import pytest
import torch
import xarray as xr

from pyro_cwvae import api
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config
from pyro_cwvae.guides import cwvae as packaged_guide
from pyro_cwvae.models import cwvae as packaged_model
from pyro_cwvae.training.checkpoint import CHECKPOINT
from pyro_cwvae.training.loop import fit
from pyro_cwvae.training.run_config import run_config
from tests.conftest import TINY
from tests.test_hostile import answer, cut_at_frame, edit_checkpoint, invoke, mmnist_folder, set_in, snapshot

MARKS = 'import pathlib\npathlib.Path(__file__).with_name("{name}").write_text("ran")\n'  # a file that runs code
ROLLOUT = ("--horizon", 2, "--context", 2, "--sequences", 1, "--samples", 1, "--quiet")


def train_with_a_marked(kind: str, packaged, root):
    """A 2-step run in ``root / "run"`` trained with a ``kind`` ("model" or "guide") file, the ``packaged`` program's
    source, that leaves a mark ``RAN`` beside itself (in ``root / "shared"``) whenever it runs; returns ``root``."""
    variant = root / "shared" / f"{kind}.py"
    variant.parent.mkdir()
    variant.write_text(MARKS.format(name="RAN") + inspect.getsource(packaged))
    fit(Config(**{**TINY, "steps": 2}, **{kind: str(variant)}, run_dir=str(root / "run")), GeneratedMovingMNIST(),
        progress=False)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run trained with a model file that leaves a mark ``RAN`` beside itself whenever it runs."""
    return train_with_a_marked("model", packaged_model, tmp_path_factory.mktemp("programs"))


@pytest.fixture
def run(trained, tmp_path):
    """A fresh copy of the run and its model file (at the path the run names), the mark removed."""
    shutil.rmtree(trained / "copy", ignore_errors=True)
    (trained / "shared" / "RAN").unlink(missing_ok=True)
    return shutil.copytree(trained / "run", tmp_path / "run")


def variant_and_mark(trained):
    return trained / "shared" / "model.py", trained / "shared" / "RAN"


def refused_line(line: str, variant) -> None:
    assert f"names the program file {variant}" in line and "--trust-programs" in line, line


def test_a_run_that_names_a_program_file_is_refused_by_every_command_without_the_flag(trained, run, tmp_path):
    variant, mark = variant_and_mark(trained)
    for args in (["rollout", "--run", run, *ROLLOUT],
                 ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"],
                 ["fit", "--resume", "--run-dir", run, "--steps", 3, "--model", variant, "--quiet"],
                 ["evaluate", run, "--no-perceptual", "--sequences", 1, "--out", tmp_path / "eval.nc", "--quiet"]):
        line = answer(args, run, mark)
        refused_line(line, variant)
        assert f"{run / CHECKPOINT} names the program file" in line
    assert not (tmp_path / "eval.nc").exists()


@pytest.fixture(scope="module")
def trained_with_a_guide(tmp_path_factory):
    """A 2-step run trained with the packaged model and a guide file that leaves a mark ``RAN`` whenever it runs."""
    root = train_with_a_marked("guide", packaged_guide, tmp_path_factory.mktemp("guide"))
    (root / "shared" / "RAN").unlink()
    return root


def test_a_run_that_names_only_a_guide_file_is_refused_without_the_flag_and_runs_it_with(trained_with_a_guide,
                                                                                          tmp_path):
    variant, mark = trained_with_a_guide / "shared" / "guide.py", trained_with_a_guide / "shared" / "RAN"
    run = shutil.copytree(trained_with_a_guide / "run", tmp_path / "run")
    evaluate = ["evaluate", run, "--no-perceptual", "--sequences", 1, "--out", tmp_path / "eval.nc", "--quiet"]
    for args in (["rollout", "--run", run, *ROLLOUT], ["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"],
                 evaluate):
        refused_line(answer(args, run, mark), variant)
    result = invoke(*evaluate, "--trust-programs")
    assert result.exit_code == 0, result.output
    assert mark.exists() and (tmp_path / "eval.nc").exists()


def test_the_api_refuses_it_too(trained, run, tmp_path):
    variant, mark = variant_and_mark(trained)
    before = snapshot(run)
    for call in (lambda: api.load_run(run), lambda: api.rollout(str(run), horizon=2, context=2, sequences=1),
                 lambda: api.evaluate([run], perceptual=False, sequences=1)):
        with pytest.raises(UserError, match="trust_programs=True") as caught:
            call()
        refused_line(str(caught.value), variant)
        assert "\n" not in str(caught.value) and not mark.exists()
    assert snapshot(run) == before


def test_a_config_file_that_names_a_program_file_is_refused_without_the_flag(trained, run, tmp_path):
    variant, mark = variant_and_mark(trained)
    new = tmp_path / "new"
    line = answer(["fit", "--config", run / "config.json", "--run-dir", new, "--steps", 1, "--quiet"], run, mark)
    assert f"--config {run / 'config.json'} names the program file {variant}; fit would run it" in line
    assert not new.exists()
    options = {"run_dir": str(new)}
    assert run_config(options, resume=False, config_file=run / "config.json", trust_programs=True).model == str(variant)
    mine = run_config({**options, "model": str(variant)}, resume=False, config_file=run / "config.json")
    assert mine.model == str(variant)  # the user's own --model needs no flag
    assert not mark.exists() and not new.exists()  # a config names the file; nothing of it runs before training


def rolled(run, out, *flags):
    result = invoke("rollout", "--run", run, *ROLLOUT, "--out", out, *flags)
    assert result.exit_code == 0, result.output
    with xr.open_dataset(out) as ds:
        return ds.prediction.values


def test_with_the_flag_the_recorded_source_runs_not_the_file_as_it_is_now(trained, run, tmp_path):
    variant, mark = variant_and_mark(trained)
    recorded = variant.read_text()
    first = rolled(run, tmp_path / "a.nc", "--trust-programs")
    assert mark.exists()
    mark.unlink()
    variant.write_text(MARKS.format(name="EVIL") + "raise SystemExit('not the recorded source')\n")
    try:
        again = rolled(run, tmp_path / "b.nc", "--trust-programs")
        np.testing.assert_array_equal(again, first)
        assert mark.exists() and not (variant.parent / "EVIL").exists()
        trusted = api.load_run(run, device="cpu", trust_programs=True)
        assert trusted.model.__code__.co_filename == str(variant)
    finally:
        variant.write_text(recorded)


def test_a_resume_with_the_flag_runs_the_recorded_source(trained, run, tmp_path):
    variant, mark = variant_and_mark(trained)
    recorded = variant.read_text()
    variant.write_text(MARKS.format(name="EVIL") + "raise SystemExit('not the recorded source')\n")
    try:
        result = invoke("fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet", "--trust-programs")
        assert result.exit_code == 0, result.output
        assert mark.exists() and not (variant.parent / "EVIL").exists()
        assert torch.load(run / CHECKPOINT, weights_only=True)["programs"]["model"]["source"] == recorded
    finally:
        variant.write_text(recorded)


def test_a_recorded_source_that_fails_at_import_is_one_line_and_writes_no_bytecode(trained, run, monkeypatch):
    variant = run / "variant.py"
    edit_checkpoint(run, set_in("config", "model", str(variant)))
    edit_checkpoint(run, set_in("programs", "model", "source", "raise RuntimeError('this model fails at import')\n"))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as for users: no __pycache__ may appear in the run
    refused_line(answer(["rollout", "--run", run, *ROLLOUT], run), variant)
    line = answer(["rollout", "--run", run, *ROLLOUT, "--trust-programs"], run)
    assert f"{variant} failed to load: RuntimeError: this model fails at import" in line


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    run = tmp_path_factory.mktemp("packaged") / "run"
    fit(Config(**{**TINY, "steps": 2}, run_dir=str(run)), GeneratedMovingMNIST(), progress=False)
    return run


def test_a_run_of_the_packaged_programs_needs_no_flag(packaged, tmp_path, recwarn):
    run = api.load_run(packaged, device="cpu")
    assert run.model is packaged_model.model and not recwarn.list
    assert run_config({"run_dir": str(tmp_path / "again")}, resume=False, config_file=packaged / "config.json")
    rolled(packaged, tmp_path / "r.nc")


def test_a_refused_resume_leaves_the_temporary_files_of_killed_writes(packaged, tmp_path):
    run = shutil.copytree(packaged, tmp_path / "run")
    (run / f".{CHECKPOINT}.killed.tmp").write_bytes(b"half a checkpoint")
    (run / "history.nc").write_bytes(b"not a history")
    line = answer(["fit", "--resume", "--run-dir", run, "--steps", 3, "--quiet"], run)
    assert "cannot read training history" in line or "history.nc" in line


def test_a_refused_data_folder_gets_no_cache_folder(packaged, tmp_path, monkeypatch):
    monkeypatch.delenv("PYRO_CWVAE_CACHE", raising=False)
    data = tmp_path / "data"
    cut_at_frame(mmnist_folder(data), keep=12)
    before = snapshot(data)
    line = answer(["rollout", "--run", packaged, "--data-dir", data, "--quiet"], packaged)
    assert "is truncated" in line and snapshot(data) == before
