"""Interrupted runs lose nothing: SIGKILL at random moments, then --resume, ends where an uninterrupted run ends."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import xarray as xr

from pyro_cwvae.checkpoint import load_checkpoint

ARGS = ["--levels", "2", "--factor", "2", "--seq-len", "8", "--batch-size", "2", "--workers", "0",
        "--z-size", "4", "--h-size", "8", "--checkpoint-every", "1", "--device", "cpu", "--quiet"]
STEPS = 30
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: the same float results


def fit_process(run_dir, *extra):
    command = [sys.executable, "-m", "pyro_cwvae", "fit", "--run-dir", str(run_dir), "--steps", str(STEPS), *ARGS, *extra]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for_training(run_dir, process, timeout=120) -> bool:
    """Wait until the process has written its first file (training has begun); False if it ended first."""
    deadline = time.monotonic() + timeout
    mark = (run_dir / "history.nc").stat().st_mtime if (run_dir / "history.nc").exists() else None
    while time.monotonic() < deadline and process.poll() is None:
        history = run_dir / "history.nc"
        if history.exists() and history.stat().st_mtime != mark:
            return True
        time.sleep(0.05)
    return process.poll() is None


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    assert fit_process(straight).wait(timeout=300) == 0

    killed, rng, kills = tmp_path / "killed", random.Random(0), 0
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        has_checkpoint = (killed / "checkpoint.pt").exists()
        if has_checkpoint and load_checkpoint(killed)["step"] == STEPS:
            break
        process = fit_process(killed, "--resume" if has_checkpoint else "--overwrite")
        if kills < 4 and wait_for_training(killed, process):
            time.sleep(rng.uniform(0.0, 2.0))  # a moment during training: mid-step, mid-checkpoint, ...
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                continue
        output = process.communicate(timeout=300)[0].decode()
        assert process.returncode == 0, output
    print(f"survived {kills} SIGKILLs")
    assert kills >= 1, "no kill landed: the run finished before the first one"

    a, b = load_checkpoint(straight), load_checkpoint(killed)
    assert a["step"] == b["step"] == STEPS
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
    with xr.open_dataset(straight / "history.nc") as ha, xr.open_dataset(killed / "history.nc") as hb:
        xr.testing.assert_equal(ha.drop_attrs(), hb.drop_attrs())


def test_sigterm_to_the_process_group_saves_a_checkpoint_before_exiting(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "pyro_cwvae", "fit", "--run-dir", str(run), "--steps", "100000", *ARGS,
               "--checkpoint-every", "100000", "--workers", "1"]
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    deadline = time.monotonic() + 120
    while not (run / "config.json").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # a few training steps
    os.killpg(process.pid, signal.SIGTERM)  # to the whole group, data-loading worker included, as a terminal does
    output = process.communicate(timeout=120)[0].decode()
    assert process.returncode == 130, output
    state = load_checkpoint(run)
    assert 1 <= state["step"] < 100000
    assert f"stopped at step {state['step']}" in output
    with xr.open_dataset(run / "history.nc") as history:
        assert int(history.step[-1]) == state["step"]
