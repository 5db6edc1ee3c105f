"""Hostile values: every number a run reads is bounded where it is read, whichever way it comes in (a command-line
option, a ``--config`` TOML file, a run's config.json, the config inside a checkpoint), and a checkpoint's tensors and
optimizer state must be what training writes. Each refusal is one line naming the option (or the checkpoint's part)
and exit code 2, and changes nothing; the values that used to hang answer within seconds under a memory limit."""
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_cwvae.data.moving_mnist import DIGIT_SIZE, MAX_SPEED, MIN_SPEED, SPEEDUPS, trajectories
from pyro_cwvae.errors import UserError
from pyro_cwvae.model.config import Config, preset, training_bytes
from pyro_cwvae.training.checkpoint import CHECKPOINT
from tests.conftest import TINY, address_space_limit
from tests.test_hostile import answer, edit_checkpoint, set_in, snapshot, trained  # noqa: F401 (a fixture)

INF, NAN = math.inf, math.nan

BAD_VALUES = {  # settings -> what the one line says (the option named)
    "levels 10^9": ({"levels": 10**9}, "--levels must lie between 1 and 16, got 1000000000"),
    "factor 10^9": ({"factor": 10**9}, "--factor must lie between 1 and 64, got 1000000000"),
    "z-size 10^6": ({"z_size": 10**6}, "--z-size must lie between 1 and 4096"),
    "h-size 10^6": ({"h_size": 10**6}, "--h-size must lie between 1 and 8192"),
    "embed-size 10^6": ({"embed_size": 10**6}, "--embed-size must lie between 1 and 8192"),
    "enc-dense-size 10^6": ({"enc_dense_size": 10**6}, "--enc-dense-size must lie between 1 and 16384"),
    "enc-dense-layers 1000": ({"enc_dense_layers": 1000}, "--enc-dense-layers must lie between 1 and 32"),
    "seq-len 10^7": ({"seq_len": 10**7}, "--seq-len must lie between 1 and 100000, got 10000000"),
    "batch-size 10^7": ({"batch_size": 10**7}, "--batch-size must lie between 1 and 100000"),
    "speed inf": ({"speed": INF}, "--speed must lie between 0.01 and 100, got inf"),
    "speed 1e12": ({"speed": 1e12}, "--speed must lie between 0.01 and 100, got 1e+12"),
    "lr inf": ({"lr": INF}, "--lr must lie between 1e-08 and 1, got inf"),
    "lr nan": ({"lr": NAN}, "--lr must lie between 1e-08 and 1, got nan"),
    "adam-eps 0": ({"adam_eps": 0.0}, "--adam-eps must lie between 1e-12 and 1, got 0"),
    "clip-norm inf": ({"clip_norm": INF}, "--clip-norm must lie between 1e-06 and 1e+09, got inf"),
    "min-std nan": ({"min_std": NAN}, "--min-std must lie between 1e-08 and 1, got nan"),
    "dec-std inf": ({"dec_std": INF}, "--dec-std must lie between 0.0001 and 100, got inf"),
    "seed -1": ({"seed": -1}, "--seed must not be negative, got -1"),
    "seed 2^32": ({"seed": 2**32}, "--seed must lie between 0 and 4294967295, got 4294967296"),
    "steps 10^12": ({"steps": 10**12}, "--steps must lie between 1 and 1000000000, got 1e+12"),
    "checkpoint-every 10^12": ({"checkpoint_every": 10**12}, "--checkpoint-every must lie between 1 and 1000000000"),
    "context 10^9": ({"context": 10**9}, "--context must lie between 1 and 100000"),
    "workers 10^6": ({"workers": 10**6}, "--workers must lie between 0 and 256"),
    "kl-warmup -1": ({"kl_warmup": -1}, "--kl-warmup must not be negative, got -1"),
    "free-nats inf": ({"free_nats": INF}, "--free-nats must lie between 0 and 1e+06, got inf"),
    "kl-balance nan": ({"kl_balance": NAN}, "--kl-balance must lie between 0 and 1, got nan"),
    "kl-beta nan": ({"kl_beta": [1.0, NAN]}, "--kl-beta needs one non-negative weight per level (2), each at most "
                                               "1e+06, got [1.0, nan]"),
    "obs-dropout 1": ({"obs_dropout": 1.0}, "--obs-dropout must lie between 0 and 0.99, got 1"),
    "obs-dropout-span 10^9": ({"obs_dropout_span": 10**9}, "--obs-dropout-span must lie between 1 and 100000"),
    "memory of a batch": ({"seq_len": 100_000, "batch_size": 50}, "--batch-size 50 x --seq-len 100000 needs about "),
    "program not Python": ({"model": "x.png"}, "--model 'x.png' is not a Python file (.py)"),
}


def option_value(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def toml_value(value) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return json.dumps(value) if isinstance(value, str) else str(value)  # str(inf) and str(nan) are TOML's spelling


def tiny_toml(path, values=()) -> str:
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in {**TINY, **dict(values)}.items()))
    return path


@pytest.fixture
def run(trained, tmp_path):
    """A copy of the trained tiny run under ``tmp_path``, whose every file ``answer`` checks is unchanged."""
    return shutil.copytree(trained, tmp_path / "run")


def run_for(way: str, request):
    """The copied run where ``way`` reads the values from it; none for a new run's options (copying and then
    checking the untouched 50 MB checkpoint cost a fifth of a second a case)."""
    return request.getfixturevalue("run") if way in RUN_WAYS else None


def way_in(way: str, values: dict, run, tmp_path) -> list:
    """The command that reads ``values`` the way ``way`` names, after writing them there."""
    new_run = ["--run-dir", tmp_path / "new", "--quiet"]
    if way == "option":
        given = [arg for key, value in values.items() for arg in (f"--{key.replace('_', '-')}", option_value(value))]
        return ["fit", "--config", tiny_toml(tmp_path / "tiny.toml"), *given, *new_run]
    if way == "--config TOML":  # trusting a program file it names, which must then be refused as not Python
        trust = ["--trust-programs"] if "model" in values else []
        return ["fit", "--config", tiny_toml(tmp_path / "bad.toml", values), *trust, *new_run]
    if way == "run's config.json":
        saved = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**saved, **values}))
        return ["rollout", "--run", run, "--horizon", 2]
    edit_checkpoint(run, lambda state: state["config"].update(values))
    return ["rollout", "--run", run, "--horizon", 2]


WAYS = ["option", "--config TOML", "run's config.json", "checkpoint's config"]
RUN_WAYS = WAYS[2:]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("case", BAD_VALUES)
def test_bad_value_is_refused_in_one_line_naming_the_option_whichever_way_it_comes(request, tmp_path, way, case):
    values, message = BAD_VALUES[case]
    args = way_in(way, values, run_for(way, request), tmp_path)
    line = answer(args, tmp_path)  # exit 2, one line, nothing under tmp_path changed (the run, the new run's place)
    assert message in line, line
    assert not (tmp_path / "new").exists()


def test_the_memory_refusal_says_the_estimate_and_the_cap():
    with pytest.raises(UserError) as caught:
        Config(**{**TINY, "seq_len": 100_000, "batch_size": 50}).validate()
    assert "needs about 4," in str(caught.value) and "GiB for one training step" in str(caught.value)
    assert "more than the 256.0 GiB pyro-cwvae accepts" in str(caught.value)
    huge_stacks = Config(**{**TINY, "levels": 4, "enc_dense_size": 16384, "enc_dense_layers": 32})
    weights, activations = training_bytes(huge_stacks)
    assert weights > 256 << 30 > activations
    with pytest.raises(UserError, match="^a model of --levels 4, --h-size 8, --embed-size 8 and --enc-dense-size "
                                        "16384 x --enc-dense-layers 32 needs about"):
        huge_stacks.validate()


@pytest.mark.parametrize("name", ["demo", "mmnist", "minerl", "gqn", "kth"])
def test_the_presets_need_far_less_than_the_cap(name):
    """About 5 GiB for the reference batch of 50 sequences of 100 frames (about 1 MiB a frame, as measured)."""
    assert sum(training_bytes(preset(name))) < 8 << 30


def cli(*args, timeout=60) -> subprocess.CompletedProcess:
    """The real command line in a fresh process, with 3.5 GiB of address space beyond importing torch (4 GiB in all
    with a CPU build of torch); a hang fails at ``timeout``."""
    return subprocess.run([sys.executable, "-m", "pyro_cwvae", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=address_space_limit(7 << 29))


@pytest.mark.parametrize("way", WAYS)
def test_a_billion_levels_answers_within_seconds(request, tmp_path, way):
    """``factor ** (levels - 1)`` for 10^9 levels never finishes: the bound on levels comes before anything uses it."""
    args = way_in(way, {"levels": 10**9}, run_for(way, request), tmp_path)
    before = snapshot(tmp_path)
    result = cli(*args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "--levels must lie between 1 and 16, got 1000000000" in lines[0]
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("speed", ["inf", "1e12"])
def test_infinite_speed_answers_within_seconds(tmp_path, speed):
    result = cli("fit", "--config", tiny_toml(tmp_path / "tiny.toml"), "--speed", speed, "--run-dir", tmp_path / "new")
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --speed must lie between 0.01 and 100, got {float(speed):g}"], result.stderr
    assert not (tmp_path / "new").exists()


def unbounded_trajectories(rng, num_frames, speed):
    """The generator's bounce loop as it was before its passes were bounded (``while True``)."""
    limit = 64.0 - DIGIT_SIZE
    position = rng.uniform(0.0, limit, size=(2, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=2)
    magnitude = rng.uniform(MIN_SPEED, MAX_SPEED, size=2) * speed
    velocity = np.stack([np.sin(angle), np.cos(angle)], axis=-1) * magnitude[:, None]
    corners = np.empty((num_frames, 2, 2))
    for t in range(num_frames):
        corners[t] = position
        position = position + velocity
        while True:
            low, high = position < 0.0, position > limit
            if not (low.any() or high.any()):
                break
            position = np.where(low, -position, np.where(high, 2.0 * limit - position, position))
            velocity = np.where(low | high, -velocity, velocity)
    return corners


@pytest.mark.parametrize("speed", [SPEEDUPS[0], 0.5, 1.0, 3.0, 6.0, 7.3, 25.0, SPEEDUPS[1]])
def test_bounded_bounces_draw_the_videos_the_unbounded_loop_drew(speed):
    """Every accepted speed, the fastest included, stays inside the frame and gives the same corners, bit for bit,
    as the loop without a bound on its passes (which never ended for an infinite or a 1e12 speed)."""
    for seed in range(20):
        corners, _ = trajectories(np.random.default_rng(seed), 200, speed)
        assert np.array_equal(corners, unbounded_trajectories(np.random.default_rng(seed), 200, speed))
        assert corners.min() >= 0 and corners.max() <= 64 - DIGIT_SIZE


@pytest.mark.parametrize("speed", [INF, 1e12, NAN, 0.0, -1.0, SPEEDUPS[1] * 1.01])
def test_generator_refuses_a_speed_outside_its_range(speed):
    with pytest.raises(ValueError, match="--speed must lie between 0.01 and 100"):
        trajectories(np.random.default_rng(0), 3, speed)


@pytest.mark.parametrize("way", ["fit --config JSON", "--config TOML", "run's config.json"])
def test_deeply_nested_config_is_one_line(request, tmp_path, way):
    deep = "[" * 100_000 + "]" * 100_000
    run = run_for(way, request)
    if way == "run's config.json":
        (run / "config.json").write_text('{"kl_beta": ' + deep + "}")
        line = answer(["rollout", "--run", run], tmp_path)
        assert f"cannot read {run / 'config.json'} as JSON: maximum recursion depth exceeded" in line, line
        return
    path = tmp_path / ("deep.json" if "JSON" in way else "deep.toml")
    path.write_text('{"kl_beta": ' + deep + "}" if "JSON" in way else "kl_beta = " + deep + "\n")
    line = answer(["fit", "--config", path, "--run-dir", tmp_path / "new"], tmp_path)
    assert f"cannot read config file {path}: maximum recursion depth exceeded" in line, line


def first_weight(state) -> str:
    return next(iter(state["nets"]))


def moments(state) -> dict:
    return state["optimizer"]["state"][0]


def group(state) -> dict:
    return state["optimizer"]["param_groups"][0]


CHECKPOINT_VALUES = {  # an edit of the checkpoint -> what the one line says
    "NaN weight": (lambda s: s["nets"][first_weight(s)].view(-1)[0].fill_(NAN), "holds values that are not finite"),
    "infinite Adam moment": (lambda s: moments(s)["exp_avg"].view(-1)[0].fill_(INF), "not finite"),
    "step 10^30": (set_in("step", 10**30), "step is 1e+30, not a count of steps from 0 to 1000000000"),
    "step -1": (set_in("step", -1), "step is -1, not a count of steps from 0 to"),
    "step of 500 digits": (set_in("step", 10**500), "step is a value too large to show (int)"),
    "key of 500 digits": (set_in(10**500, 1), "holds unknown key(s) a value too large to show (int)"),
    "Adam step of a vector": (lambda s: moments(s).update(step=torch.ones(3)), "['step'] is tensor([1., 1., 1.])"),
    "Adam step negative": (lambda s: moments(s).update(step=torch.tensor(-1.0)), "['step'] is tensor(-1.), not a"),
    "Adam step 10^30": (lambda s: moments(s).update(step=torch.tensor(1e30)), "not a count of steps from 0 to"),
    "Adam moment of ints": (lambda s: moments(s).update(exp_avg=moments(s)["exp_avg"].long()), "not floating point"),
    "Adam moment of float64": (lambda s: moments(s).update(exp_avg=moments(s)["exp_avg"].double()),
                               "['exp_avg'] is float64 (32, 1, 4, 4): it does not fit a parameter of shape"),
    "negative squared moment": (lambda s: moments(s)["exp_avg_sq"].view(-1)[0].fill_(-1.0), "holds negative values"),
    "Adam moment missing": (lambda s: moments(s).pop("exp_avg"), "optimizer.state[0] lacks exp_avg"),
    "learning rate inf": (lambda s: group(s).update(lr=INF), "optimizer setting 'lr' is inf, not from 1e-08 to 1"),
    "learning rate 1e30": (lambda s: group(s).update(lr=1e30), "setting 'lr' is 1e+30, not from 1e-08 to 1"),
    "torch epsilon negative": (lambda s: group(s).update(eps=-1.0), "optimizer setting 'eps' is -1, not from 1e-12"),
    "Keras epsilon nan": (lambda s: group(s).update(eps_hat=NAN), "setting 'eps_hat' is nan, not from 1e-12 to 1"),
    "betas above 1": (lambda s: group(s).update(betas=(0.9, 1.5)), "'betas' is (0.9, 1.5), not two numbers in [0, 1)"),
    "three betas": (lambda s: group(s).update(betas=(0.9, 0.9, 0.9)), "not two numbers in [0, 1)"),
    "negative beta": (lambda s: group(s).update(betas=(-0.5, 0.9)), "not two numbers in [0, 1)"),
    "no learning rate": (lambda s: group(s).pop("lr"), "an optimizer param group lacks lr"),
}


@pytest.mark.parametrize("command", ["rollout", "fit --resume"])
@pytest.mark.parametrize("case", CHECKPOINT_VALUES)
def test_checkpoint_value_that_training_never_writes_is_refused(run, tmp_path, case, command):
    edit, message = CHECKPOINT_VALUES[case]
    edit_checkpoint(run, edit)
    args = ["rollout", "--run", run] if command == "rollout" else ["fit", "--resume", "--run-dir", run, "--quiet"]
    line = answer(args, tmp_path)
    assert f"{run / CHECKPOINT} is not a checkpoint pyro-cwvae can use" in line and message in line, line
