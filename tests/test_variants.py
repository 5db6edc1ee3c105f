"""Variant files that change the networks (``make_nets``) or the prior's family: they train, resume bit for bit,
are checked against their own networks when loaded, and roll out with the KL of the distributions they return."""
import inspect
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
import xarray as xr
from pyro import poutine
from typer.testing import CliRunner

from pyro_cwvae.cli.app import app
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.elbo import detached, elbo_terms
from pyro_cwvae.model.programs import load_programs
from pyro_cwvae.models import cwvae as packaged_model
from pyro_cwvae.prediction.kl import level_kls
from pyro_cwvae.prediction.run import load_run
from pyro_cwvae.training.checkpoint import load_checkpoint
from pyro_cwvae.training.loop import fit
from tests.conftest import TINY

DEEPER_PRIOR = textwrap.dedent('''
    """The packaged model, with one more dense ReLU layer in every level's prior network."""
    from torch import nn

    from pyro_cwvae.model.nets import CWVAENets
    from pyro_cwvae.models.cwvae import model


    def make_nets(cfg):
        nets = CWVAENets(cfg)
        for level in nets.levels:
            transition = level.transition
            transition.hidden = nn.Sequential(transition.hidden, nn.ReLU(), nn.Linear(cfg.embed_size, cfg.embed_size))
        return nets
''')

NORMAL_PRIOR = "dist.Normal(loc, scale).to_event(1)"
STUDENT_T_PRIOR = "dist.StudentT(4.0, loc, scale).to_event(1)"  # no analytic KL against the Normal posterior
DF = 4.0


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    folder = tmp_path_factory.mktemp("variants")
    source = inspect.getsource(packaged_model)
    assert source.count(NORMAL_PRIOR) == 1
    (folder / "deeper_prior.py").write_text(DEEPER_PRIOR)
    (folder / "student_t_prior.py").write_text(source.replace(NORMAL_PRIOR, STUDENT_T_PRIOR))
    return folder


def train_and_resume(cfg: Config, root) -> tuple[Config, Config]:
    """4 steps straight, and 2 steps resumed to 4: the two run configs."""
    data = GeneratedMovingMNIST()
    straight = cfg.replace(steps=4, checkpoint_every=2, run_dir=str(root / "straight"))
    fit(straight, data, progress=False)
    split = straight.replace(steps=2, run_dir=str(root / "split"))
    fit(split, data, progress=False)
    fit(split.replace(steps=4), data, resume=True, progress=False)
    return straight, split


def assert_resumed_equals_straight(straight: Config, split: Config) -> dict:
    a, b = load_checkpoint(straight.run_dir), load_checkpoint(split.run_dir)
    assert a["step"] == b["step"] == 4 and a["nets"].keys() == b["nets"].keys()
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
    return a


@pytest.fixture(scope="module")
def deeper(variants, tmp_path_factory):
    cfg = Config(**TINY, model=str(variants / "deeper_prior.py"), elbo="meanfield")
    return train_and_resume(cfg, tmp_path_factory.mktemp("deeper"))


@pytest.fixture(scope="module")
def student_t(variants, tmp_path_factory):
    cfg = Config(**TINY, model=str(variants / "student_t_prior.py"), elbo="trace")
    return train_and_resume(cfg, tmp_path_factory.mktemp("student_t"))


def test_a_prior_network_with_an_extra_layer_trains_resumes_and_rolls_out(deeper):
    straight, split = deeper
    state = assert_resumed_equals_straight(straight, split)
    extra = "levels.0.transition.hidden.2.weight"  # the added layer, trained: its weights moved from the start
    pyro.set_rng_seed(straight.seed)
    start = load_programs(straight.model, straight.guide).make_nets(straight).state_dict()
    assert extra in state["nets"] and not torch.equal(state["nets"][extra], start[extra])
    run = load_run(split.run_dir, device="cpu", trust_programs=True)  # checked against the variant's networks
    assert torch.equal(run.nets.state_dict()[extra], state["nets"][extra])

    roll_out(split.run_dir)


def roll_out(run_dir, analytic: bool = True) -> None:
    """``pyro-cwvae rollout`` of the run: 2 context frames, 4 predicted, 2 samples; its KLs finite where defined
    (and not negative where analytic: a single-sample log q - log p can be)."""
    result = CliRunner().invoke(app, ["rollout", "--run", run_dir, "--context", 2, "--horizon", 4,
                                      "--sequences", 1, "--samples", 2, "--quiet", "--trust-programs"])
    assert result.exit_code == 0, result.output
    with xr.open_dataset(f"{run_dir}/rollout.nc") as rolled:
        assert rolled.prediction.sizes["time"] == 6 and rolled.sizes["sample"] == 2
        assert np.isfinite(rolled.prediction.values).all()
        kl = rolled.kl.values
        assert np.isfinite(kl[:, 0]).all() and (not analytic or (kl[:, 0] >= 0).all())  # level 1: every frame


def log_student_t(x, df, loc, scale):
    """log StudentT(x; df, loc, scale), summed over the last dimension, written out."""
    y = (x - loc) / scale
    return (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - scale.log()
            - (df + 1) / 2 * torch.log1p(y ** 2 / df)).sum(-1)


def log_normal(x, loc, scale):
    return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_a_student_t_prior_trains_resumes_and_rolls_out_with_log_q_minus_log_p(student_t):
    straight, split = student_t
    assert_resumed_equals_straight(straight, split)
    run = load_run(split.run_dir, device="cpu", trust_programs=True)
    video = torch.from_numpy(run.dataset().test_video(0)[:6]).float().div(255)[None]
    pyro.set_rng_seed(11)
    kl = level_kls(run, video)  # (1, L, T)
    pyro.set_rng_seed(11)  # the same draws, traced here
    with torch.no_grad():
        guide_trace = poutine.trace(run.guide).get_trace(video, run.nets, run.cfg)
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(
            None, run.nets, run.cfg, num_frames=6, batch_size=1)
    for level, frame in [(1, 3), (2, 2)]:
        name = run.cfg.clock.site_name(level, frame)
        z, q, p = guide_trace.nodes[name]["value"], guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        assert type(p.base_dist).__name__ == "StudentT"
        expected = log_normal(z, q.base_dist.loc, q.base_dist.scale) - log_student_t(
            z, DF, p.base_dist.loc, p.base_dist.scale)
        assert np.isfinite(kl[0, level - 1, frame])
        np.testing.assert_allclose(kl[0, level - 1, frame], expected.item(), rtol=1e-5, atol=1e-5)
    assert np.isnan(kl[0, 1, 1])  # level 2 does not step at odd frames
    roll_out(split.run_dir, analytic=False)


def test_a_student_t_prior_under_meanfield_falls_back_as_pyros_elbo_does(variants, video, tiny_cfg):
    cfg = tiny_cfg.replace(model=str(variants / "student_t_prior.py"), elbo="meanfield")
    programs = load_programs(cfg.model, cfg.guide)
    nets = programs.make_nets(cfg)
    pyro.set_rng_seed(2)
    terms = elbo_terms(programs.model.fn, guide, video, nets, cfg)
    pyro.set_rng_seed(2)
    expected = pyro.infer.TraceMeanField_ELBO().differentiable_loss(programs.model.fn, guide, video, nets, cfg)
    torch.testing.assert_close(terms.loss * video.shape[:2].numel(), expected, rtol=1e-6, atol=0)
    pyro.set_rng_seed(2)
    sampled = elbo_terms(programs.model.fn, guide, video, nets, cfg.replace(elbo="trace"))
    torch.testing.assert_close(terms.loss, sampled.loss, rtol=1e-6, atol=0)  # the same log q - log p


def test_kl_balance_stops_gradients_through_a_student_t(variants, video, tiny_cfg):
    """``detached`` rebuilds a StudentT from its parameters; the balanced objective trains prior and posterior."""
    df, loc, scale = (torch.tensor([4.0, 5.0], requires_grad=True) for _ in range(3))
    fn = pyro.distributions.StudentT(df, loc, scale.abs() + 1).to_event(1)
    cut = detached(fn)
    assert type(cut.base_dist) is type(fn.base_dist) and cut.reinterpreted_batch_ndims == 1
    for name in ("df", "loc", "scale"):
        assert torch.equal(getattr(cut.base_dist, name), getattr(fn.base_dist, name))
        assert not getattr(cut.base_dist, name).requires_grad
    cfg = tiny_cfg.replace(model=str(variants / "student_t_prior.py"), elbo="trace", kl_balance=0.8)
    programs = load_programs(cfg.model, cfg.guide)
    nets = programs.make_nets(cfg)
    pyro.set_rng_seed(4)
    terms = elbo_terms(programs.model.fn, guide, video, nets, cfg)
    grads = torch.autograd.grad(terms.objective, [nets.level(1).transition.head.loc.weight,
                                                  nets.level(1).posterior.head.loc.weight])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


TINY_OPTIONS = ["--levels", "2", "--factor", "2", "--seq-len", "8", "--batch-size", "2", "--z-size", "4", "--h-size",
                "8", "--embed-size", "8", "--enc-dense-size", "16", "--enc-dense-layers", "2", "--device", "cpu"]

BROKEN = textwrap.dedent('''
    """A variant with a bug: its model raises."""


    def model(video, nets, cfg, *args, **kwargs):
        raise ValueError("a bug in the variant")
''')


def test_a_variant_that_raises_ends_fit_with_its_own_lines(tmp_path):
    """The program's frames and one line naming it, not the package's frames around them; and the process exits
    although a data worker (which ignores SIGTERM) was loading: its loader is closed on the way out. The run
    folder it leaves has no checkpoint, and fit says so rather than offering --resume."""
    program, run = tmp_path / "broken.py", tmp_path / "run"
    program.write_text(BROKEN)
    result = subprocess.run([sys.executable, "-m", "pyro_cwvae", "fit", "--model", str(program), "--run-dir", str(run),
                             "--workers", "1", "--steps", "2", "--quiet", *TINY_OPTIONS], capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: the model program {program} raised ValueError: a bug in the variant")
    assert f'File "{program}", line 6, in model' in result.stderr and 'raise ValueError("a bug' in result.stderr
    assert "pyro_cwvae" not in result.stderr.replace(f"{tmp_path}", "")  # no frame of the package
    again = CliRunner().invoke(app, ["fit", "--run-dir", str(run), "--steps", "2", *TINY_OPTIONS])
    assert again.exit_code == 2 and "holds a run without a checkpoint" in again.output
    assert "pass --overwrite to start over" in again.output


@pytest.mark.parametrize("kind", ["model", "guide"])
def test_fit_of_a_variant_says_to_trust_its_programs_in_the_next_command(tmp_path, kind):
    program, run = tmp_path / "same.py", tmp_path / "run"
    program.write_text(f"from pyro_cwvae.{kind}s.cwvae import {kind}  # the packaged {kind}, from a file\n")
    result = CliRunner().invoke(app, ["fit", f"--{kind}", str(program), "--run-dir", str(run), "--steps", "1",
                                      "--workers", "0", "--quiet", *TINY_OPTIONS])
    assert result.exit_code == 0, result.output
    assert f"next: pyro-cwvae rollout --run {run} --trust-programs && " in result.output


SITE_NAME = "clock.site_name(level, clock.frame(level, step))"


@pytest.mark.parametrize("kind, edit, first, site, partner", [
    ("guide", (SITE_NAME, "clock.site_name(level, step)"), "model", "s_2_4", "s_2_1"),  # steps taken for frames
    ("guide", ("    return", "    pyro.sample('temperature', dist.Normal(0.0, 1.0))\n    return"), "guide",
     "temperature", None),
    ("guide", ("    return", "    pyro.sample('t', dist.Normal(0.0, 1.0), infer={'is_auxiliary': True})\n    return"),
     "guide", "t", None),
    ("model", (SITE_NAME, "f'z_{level}_{clock.frame(level, step)}'"), "model", "z_1_0", "s_1_0")])
def test_a_variant_whose_latent_sites_differ_from_the_other_programs_is_one_line(tmp_path, kind, edit, first, site,
                                                                                partner):
    """The ELBO pairs the model's latent sites with the guide's by name: a site of one alone is named with both
    program files (it was a bare KeyError from the package, or, for a site of the guide's, silently left out)."""
    source = getattr(load_programs(None, None), kind).source
    assert source.count(edit[0]) == 1
    program = tmp_path / f"{kind}.py"
    program.write_text(source.replace(*edit))
    result = CliRunner().invoke(app, ["fit", f"--{kind}", str(program), "--run-dir", str(tmp_path / "run"),
                                      "--steps", "1", "--workers", "0", "--quiet", *TINY_OPTIONS])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    files = {"model": "packaged", "guide": "packaged", kind: str(program)}
    second = "guide" if first == "model" else "model"
    if site == "t":  # auxiliary: Pyro's ELBOs allow such a site, this one has no term for it
        assert lines[0].startswith(f"error: the guide ({program}) samples the auxiliary site 't': this ELBO"), lines
        return
    assert lines[0].startswith(f"error: the {first} ({files[first]}) samples the latent site {site!r} and the "
                               f"{second} ({files[second]}) has no site of that name"), lines[0]
    assert (f"its sites without a partner: {partner}," in lines[0]) == (partner is not None), lines[0]


def test_a_variant_run_resumes_with_its_program_given_again_by_a_relative_path(tmp_path, monkeypatch):
    """The run records the absolute path; ``--model same.py`` again names the same file, not a different model."""
    monkeypatch.chdir(tmp_path)
    Path("same.py").write_text("from pyro_cwvae.models.cwvae import model\n")
    common = ["--model", "same.py", "--run-dir", "run", "--workers", "0", "--quiet", *TINY_OPTIONS]
    assert CliRunner().invoke(app, ["fit", "--steps", "1", *common]).exit_code == 0
    resumed = CliRunner().invoke(app, ["fit", "--steps", "2", "--resume", "--trust-programs", *common])
    assert resumed.exit_code == 0 and "step 2:" in resumed.output, resumed.output
    Path("other.py").write_text(Path("same.py").read_text())
    common[1] = "other.py"
    refused = CliRunner().invoke(app, ["fit", "--steps", "3", "--resume", "--trust-programs", *common])
    assert refused.exit_code == 2 and "--model other.py differs from the resumed run's" in refused.output
