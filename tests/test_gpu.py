"""Checks on a CUDA device, run by benchmarks/gpu.sh on a GPU machine (skipped where there is none)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from pyro_cwvae.training.checkpoint import load_checkpoint
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.prediction.scores import psnr, ssim
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.prediction import PredictionOptions, load_run
from pyro_cwvae.prediction.rollout import rollout
from pyro_cwvae.training.history import HISTORY
from pyro_cwvae.training.loop import fit
from pyro_cwvae.training.step import WARMUP_STEPS

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (benchmarks/gpu.sh)")]


def test_elbo_on_cuda_matches_cpu(tiny_cfg, video):
    """The same weights give the same analytic ELBO on both devices, up to the noise each device draws."""
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets = CWVAENets(cfg)
    cpu = torch.stack([elbo_terms(model, guide, video, nets, cfg).pack().detach() for _ in range(20)]).mean(0)
    nets.cuda()
    cuda = torch.stack([elbo_terms(model, guide, video.cuda(), nets, cfg).pack().detach() for _ in range(20)]).mean(0)
    assert cuda.device.type == "cuda" and torch.isfinite(cuda).all()
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0.02, atol=0.05)


def test_fit_resume_and_rollout_on_cuda(tiny_cfg, tmp_path):
    """Bit for bit with --deterministic: without it cuDNN's deconvolution gradients differ by rounding from one
    run to the next, and four Adam steps make that 1e-5 and more in some weights."""
    cfg = tiny_cfg.replace(device="cuda", steps=4, checkpoint_every=2, deterministic=True)
    data = GeneratedMovingMNIST()
    fit(cfg.replace(steps=2), data, progress=False)
    fit(cfg, data, resume=True, progress=False)
    straight = cfg.replace(run_dir=str(tmp_path / "straight"))
    fit(straight, data, progress=False)
    a, b = load_checkpoint(straight.run_dir), load_checkpoint(cfg.run_dir)
    for name, tensor in a["nets"].items():
        assert torch.equal(tensor, b["nets"][name]), name
    options = PredictionOptions(horizon=20, context=4, samples=2, sequences=2, device="cuda")
    ds = rollout(load_run(cfg.run_dir, options.device), options, dataset=data)
    assert ds.prediction.shape == (2, 2, 24, 1, 64, 64) and np.isfinite(ds.psnr.values).all()


def test_deterministic_after_a_cuda_product_without_a_fixed_workspace_is_refused_in_one_line():
    """torch fixes cuBLAS's workspace setting at the process's first product: --deterministic after one made
    without CUBLAS_WORKSPACE_CONFIG cannot be deterministic, and says so before the step would raise."""
    imports = "import torch\nfrom pyro_cwvae.training.devices import set_deterministic\n"
    product = "torch.ones(2, 2, device='cuda') @ torch.ones(2, 2, device='cuda')\n"
    deterministic = "set_deterministic(True, torch.device('cuda'))\n"
    env = {name: value for name, value in os.environ.items() if name != "CUBLAS_WORKSPACE_CONFIG"}
    late = subprocess.run([sys.executable, "-c", imports + product + deterministic], env=env, capture_output=True,
                          text=True)
    assert late.returncode != 0 and "UserError: --deterministic: this process ran a CUDA matrix product" in late.stderr
    early = subprocess.run([sys.executable, "-c", imports + deterministic + product], env=env, capture_output=True,
                           text=True)
    assert early.returncode == 0, early.stderr


def test_metrics_on_cuda_match_cpu():
    a, b = torch.rand(3, 5, 1, 64, 64), torch.rand(3, 5, 1, 64, 64)
    torch.testing.assert_close(psnr(a.cuda(), b.cuda()).cpu(), psnr(a, b))
    torch.testing.assert_close(ssim(a.cuda(), b.cuda()).cpu(), ssim(a, b))


@pytest.mark.parametrize("precision,compile_mode", [("tf32", "none"), ("bf16", "none"), ("bf16", "default")])
def test_fit_with_accelerations_on_cuda(tiny_cfg, precision, compile_mode):
    # past the warm-up: without --compile the graph (on by default) is captured and replayed, with autocast in it
    steps = WARMUP_STEPS + 2
    cfg = tiny_cfg.replace(device="cuda", steps=steps, precision=precision, compile=compile_mode)
    result = fit(cfg, GeneratedMovingMNIST(), progress=False)
    assert np.isfinite([[row.loss, row.grad_norm, *row.kl] for row in result.history.rows]).all()
    assert result.step == steps


# --cuda-graph (pyro_cwvae/training/step.py): a graphed run against an eager one, resume, and a variant it refuses.
GRAPH_STEPS = 50
LAPLACE_GUIDE = ("dist.Normal(loc, scale).to_event(1)", "dist.Laplace(loc, scale).to_event(1)")


def laplace_guide(tmp_path) -> str:
    """A variant guide: Laplace posteriors, whose KLs to the Normal priors the ELBO takes site by site (torch has
    them in closed form), not stacked by level as the packaged programs' Normal pairs are."""
    from pyro_cwvae.model.programs import load_programs

    source = load_programs(None, None).guide.source
    assert LAPLACE_GUIDE[0] in source
    path = tmp_path / "laplace_guide.py"
    path.write_text(source.replace(*LAPLACE_GUIDE))
    return str(path)


def weights_and_history(cfg):
    state = load_checkpoint(cfg.run_dir)
    with xr.open_dataset(Path(cfg.run_dir) / HISTORY) as history:
        return state["nets"], state["optimizer"], history.drop_attrs().load()


def where_runs_part(run_a, run_b) -> str:
    """Where two runs (``weights_and_history``) differ and by how much, for an assertion's message: rounding (1e-7,
    another kernel chosen) reads differently from a fault such as noise repeated by every replay (order 1)."""
    (nets_a, _, history_a), (nets_b, _, history_b) = run_a, run_b
    found = []
    for name, variable in history_a.data_vars.items():
        a, b = variable.values, history_b[name].values
        if a.shape != b.shape:
            found.append(f"{name}: shapes {a.shape} and {b.shape}")
            continue
        unequal = (a != b) & ~(np.isnan(a) & np.isnan(b))
        if unequal.any():
            first = variable[variable.dims[0]].values[np.argwhere(unequal)[0][0]]
            found.append(f"{name} first differs at {variable.dims[0]} {first}, by up to "
                         f"{np.nanmax(np.abs(a - b)):.3g}")
    weights = {name: (tensor - nets_b[name]).abs().max().item() for name, tensor in nets_a.items()}
    worst = max(weights, key=weights.get)
    if weights[worst] > 0:
        found.append(f"weights differ by up to {weights[worst]:.3g} ({worst})")
    return "; ".join(found)


@pytest.mark.parametrize("program", ["default", "variant"])
def test_graphed_run_equals_an_eager_run_over_50_steps(tiny_cfg, tmp_path, program):
    """Bit for bit with --deterministic: the same kernels with the same inputs, launched from a graph."""
    cfg = tiny_cfg.replace(device="cuda", steps=GRAPH_STEPS, checkpoint_every=GRAPH_STEPS, deterministic=True,
                           elbo="meanfield", obs_dropout=0.3, kl_warmup=20)
    if program == "variant":
        cfg = cfg.replace(guide=laplace_guide(tmp_path))
    runs = {mode: cfg.replace(cuda_graph=mode, run_dir=str(tmp_path / mode)) for mode in ("off", "on")}
    for run in runs.values():
        fit(run, GeneratedMovingMNIST(), progress=False)
    run_a, run_b = (weights_and_history(run) for run in runs.values())
    assert not where_runs_part(run_a, run_b), where_runs_part(run_a, run_b)
    (nets_a, opt_a, history_a), (nets_b, opt_b, history_b) = run_a, run_b
    xr.testing.assert_equal(history_a, history_b)
    for name, tensor in nets_a.items():
        assert torch.equal(tensor, nets_b[name]), name
    for index, state in opt_a["state"].items():
        assert all(torch.equal(value, opt_b["state"][index][key]) for key, value in state.items()), index


def test_graphed_resume_equals_an_uninterrupted_graphed_run(tiny_cfg, tmp_path):
    cfg = tiny_cfg.replace(device="cuda", steps=12, checkpoint_every=4, deterministic=True, cuda_graph="on")
    data = GeneratedMovingMNIST()
    straight = cfg.replace(run_dir=str(tmp_path / "straight"))
    fit(straight, data, progress=False)
    split = cfg.replace(run_dir=str(tmp_path / "split"), steps=4)
    fit(split, data, progress=False)
    fit(split.replace(steps=12), data, resume=True, progress=False)  # warms up and captures again after resuming
    run_a, run_b = (weights_and_history(run) for run in (straight, split))
    assert not where_runs_part(run_a, run_b), where_runs_part(run_a, run_b)
    (nets_a, _, history_a), (nets_b, _, history_b) = run_a, run_b
    xr.testing.assert_equal(history_a, history_b)
    for name, tensor in nets_a.items():
        assert torch.equal(tensor, nets_b[name]), name


def test_a_variant_reading_a_value_on_the_host_is_refused_under_the_graph(tiny_cfg, tmp_path):
    from pyro_cwvae.errors import UserError
    from pyro_cwvae.model.programs import load_programs

    marker = "    embeddings = observational_dropout("
    path = tmp_path / "syncing_guide.py"
    path.write_text(load_programs(None, None).guide.source.replace(
        marker, "    if video.mean().item() > 2.0:\n        video = video / 2\n" + marker))
    cfg = tiny_cfg.replace(device="cuda", guide=str(path), cuda_graph="on")
    with pytest.raises(UserError, match=r"cannot be captured: .*\.item\(\).*syncing_guide.py:\d+.*--cuda-graph off"):
        fit(cfg, GeneratedMovingMNIST(), progress=False)
    fit(cfg.replace(cuda_graph="off", steps=2), GeneratedMovingMNIST(), progress=False)  # eager, it trains


def test_bad_steps_are_skipped_inside_the_graph(tiny_cfg, tmp_path):
    """A step made non-finite inside the captured step (a variant multiplying the frames by a device tensor that
    the test sets to NaN) is skipped without changing the weights, and reported at the next flush."""
    from pyro_cwvae.errors import NumericalError

    variant = tmp_path / "poisoned_model.py"
    variant.write_text(POISONED_MODEL)
    cfg = tiny_cfg.replace(device="cuda", model=str(variant), steps=12, checkpoint_every=12, cuda_graph="on")
    result = fit(cfg, GeneratedMovingMNIST(), max_bad_steps=1, progress=False)
    rows = result.history.rows
    assert [row.step for row in rows if not np.isfinite(row.loss)] == [8]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(cfg.run_dir)["nets"].values())
    with pytest.raises(NumericalError, match="at step 8"):
        fit(cfg.replace(run_dir=str(tmp_path / "strict")), GeneratedMovingMNIST(), progress=False)


POISONED_MODEL = textwrap.dedent("""
    import torch
    from pyro_cwvae.models.cwvae import model as default_model
    poison = {}

    def model(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
        if video is not None:  # a device counter, advanced inside the graph: NaN at the 8th training step
            if "count" not in poison:
                poison["count"] = torch.zeros((), device=video.device)
            poison["count"].add_(1)
            video = video * torch.where(poison["count"] == 8, float("nan"), 1.0)
        return default_model(video, nets, cfg, kl_scale, num_frames, batch_size)
""")


def test_watchers_leave_a_graphed_run_bit_identical(tiny_cfg, tmp_path):
    """Previews and TensorBoard between the replays of a CUDA graph: the random states they use (the CUDA
    generator's included) are put back, and the graph's static buffers are left alone."""
    from pyro_cwvae.watch import watchers_for

    cfg = tiny_cfg.replace(device="cuda", steps=12, checkpoint_every=6, deterministic=True, cuda_graph="on",
                           context=4, preview_every=4, tensorboard="auto")  # the GPU machine may lack it
    data = GeneratedMovingMNIST(test_length=40)
    plain = cfg.replace(run_dir=str(tmp_path / "plain"), preview_every=0, tensorboard="off")
    fit(plain, data, progress=False)
    watched = cfg.replace(run_dir=str(tmp_path / "watched"))
    result = fit(watched, data, progress=False, watchers=watchers_for(watched, data, say=None))
    assert [step for step, _ in result.history.previews] == [4, 8, 12]
    (nets_a, _, history_a), (nets_b, _, history_b) = (weights_and_history(run) for run in (plain, watched))
    xr.testing.assert_equal(history_a[["loss", "kl"]], history_b[["loss", "kl"]])
    for name, tensor in nets_a.items():
        assert torch.equal(tensor, nets_b[name]), name
