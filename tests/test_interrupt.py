"""Interrupted runs lose nothing: SIGKILL at random moments, in the middle of the history and checkpoint writes
too, then --resume, ends exactly where an uninterrupted run ends."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import xarray as xr

from pyro_cwvae.training.checkpoint import load_checkpoint

ARGS = ["--levels", "2", "--factor", "2", "--seq-len", "8", "--batch-size", "2", "--workers", "0",
        "--z-size", "4", "--h-size", "8", "--checkpoint-every", "1", "--device", "cpu", "--quiet"]
STEPS = 12
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: the same float results

# `pyro-cwvae ARGS...` whose COUNT-th atomic write of the file NAME stops, file written but not yet in place, until
# killed: the process is then surely inside that write (the history's, or the checkpoint's).
STALLED_FIT = """
import os, sys, time
name, count, *args = sys.argv[1:]
seen, replace = 0, os.replace
def stalling_replace(source, target, *rest, **options):
    global seen
    if os.path.basename(target) == name:
        seen += 1
        if seen == int(count):
            print(f"stalled in the write of {name}", flush=True)
            time.sleep(600)
    return replace(source, target, *rest, **options)
os.replace = stalling_replace
sys.argv = ["pyro-cwvae", *args]
from pyro_cwvae.cli.app import main
main()
"""


def fit_command(run_dir, resume: bool) -> list[str]:
    return ["fit", "--run-dir", str(run_dir), "--steps", str(STEPS), *ARGS, "--resume" if resume else "--overwrite"]


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen) -> None:
    output = process.communicate(timeout=300)[0].decode()
    assert process.returncode == 0, output


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)


def kill_inside_write(run_dir, name: str, count: int, resume: bool) -> None:
    """Run until the ``count``-th write of ``name`` is under way, then SIGKILL the process there."""
    process = start([sys.executable, "-c", STALLED_FIT, name, str(count), *fit_command(run_dir, resume)])
    for line in iter(process.stdout.readline, b""):
        if line.startswith(b"stalled in the write"):
            kill(process)
            assert list(run_dir.glob(f".{name}.*.tmp")), "the kill did not land inside the write"
            return
    raise AssertionError(f"the run ended before its write {count} of {name}: {process.wait()}")


def kill_at_random_moment(run_dir, rng: random.Random) -> bool:
    """SIGKILL a resumed run a random moment after training began; False if it finished first."""
    process = start([sys.executable, "-m", "pyro_cwvae", *fit_command(run_dir, resume=True)])
    mark = (run_dir / "history.nc").stat().st_mtime_ns
    deadline = time.monotonic() + 120
    while process.poll() is None and (run_dir / "history.nc").stat().st_mtime_ns == mark:
        assert time.monotonic() < deadline, "training did not begin"
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, 1.0))  # mid-step, mid-write, between writes...
    if process.poll() is not None:
        return False
    kill(process)
    return True


def history_step(run_dir) -> int:
    with xr.open_dataset(run_dir / "history.nc") as history:
        return int(history.step[-1])


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight, killed, rng = tmp_path / "straight", tmp_path / "killed", random.Random(0)
    # the uninterrupted run alongside the killed ones (one thread each), with one checkpoint: the same numbers
    uninterrupted = start([sys.executable, "-m", "pyro_cwvae", *fit_command(straight, resume=False),
                           "--checkpoint-every", str(STEPS)])

    try:
        kill_inside_write(killed, "history.nc", count=rng.randint(2, 4), resume=False)
        kill_inside_write(killed, "checkpoint.pt", count=rng.randint(1, 3), resume=True)
        # the history is written first: it now runs one step ahead of the checkpoint, and resuming drops that row
        assert history_step(killed) == load_checkpoint(killed)["step"] + 1
        random_kills = sum(kill_at_random_moment(killed, rng) for _ in range(2))
        print(f"killed in a history write, in a checkpoint write and at {random_kills} random moments")
        finish(start([sys.executable, "-m", "pyro_cwvae", *fit_command(killed, resume=True)]))
        finish(uninterrupted)
    finally:
        if uninterrupted.poll() is None:  # a failure above: no run outlives the test
            kill(uninterrupted)

    a, b = load_checkpoint(straight), load_checkpoint(killed)
    assert a["step"] == b["step"] == STEPS
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
    for index, moments in a["optimizer"]["state"].items():
        assert all(torch.equal(value, b["optimizer"]["state"][index][key]) for key, value in moments.items())
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
