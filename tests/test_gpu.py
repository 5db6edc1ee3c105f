"""Checks on a CUDA device, run by benchmarks/gpu.sh on a GPU machine (skipped where there is none)."""
import numpy as np
import pytest
import torch

from pyro_cwvae.training.checkpoint import load_checkpoint
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.prediction.scores import psnr, ssim
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.prediction import PredictionOptions, load_run
from pyro_cwvae.prediction.rollout import rollout
from pyro_cwvae.training.loop import fit

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


def test_metrics_on_cuda_match_cpu():
    a, b = torch.rand(3, 5, 1, 64, 64), torch.rand(3, 5, 1, 64, 64)
    torch.testing.assert_close(psnr(a.cuda(), b.cuda()).cpu(), psnr(a, b))
    torch.testing.assert_close(ssim(a.cuda(), b.cuda()).cpu(), ssim(a, b))


@pytest.mark.parametrize("precision,compile_mode", [("tf32", "none"), ("bf16", "none"), ("bf16", "default")])
def test_fit_with_accelerations_on_cuda(tiny_cfg, precision, compile_mode):
    cfg = tiny_cfg.replace(device="cuda", steps=3, precision=precision, compile=compile_mode)
    result = fit(cfg, GeneratedMovingMNIST(), progress=False)
    assert np.isfinite([[row.loss, row.grad_norm, *row.kl] for row in result.history.rows]).all() and result.step == 3
