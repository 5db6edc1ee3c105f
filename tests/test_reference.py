"""The Pyro programs against a hand-written PyTorch CW-VAE (benchmarks/reference.py) with the same weights and seed:
the analytic-KL ELBO, its terms and every gradient, and the open-loop rollout."""
import numpy as np
import pyro
import pytest
import torch

from benchmarks import reference
from pyro_cwvae.elbo import elbo_terms
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.nets import CWVAENets
from pyro_cwvae.predict import TrainedRun, decode, open_loop_states

RTOL, ATOL = 1e-5, 1e-7


def three_levels(tiny_cfg):
    """3 levels, k 2, over 6 frames: the top level's second step sees only 2 of its 4 frames."""
    cfg = tiny_cfg.replace(levels=3, seq_len=6, elbo="meanfield")
    return cfg, torch.rand(2, 6, 1, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("case,kl_scale", [("tiny", 1.0), ("3-levels", 0.3)])
def test_meanfield_elbo_and_gradients_match_the_reference(tiny_cfg, video, case, kl_scale):
    cfg, video = (tiny_cfg.replace(elbo="meanfield"), video) if case == "tiny" else three_levels(tiny_cfg)
    nets = CWVAENets(cfg)
    params = list(nets.parameters())
    pyro.set_rng_seed(7)
    terms = elbo_terms(model, guide, video, nets, cfg, kl_scale)
    grads = torch.autograd.grad(terms.loss, params)
    pyro.set_rng_seed(7)
    expected = reference.negative_elbo(nets, video, cfg, kl_scale)
    expected_grads = torch.autograd.grad(expected.loss, params)

    torch.testing.assert_close(terms.loss, expected.loss, rtol=RTOL, atol=0)
    torch.testing.assert_close(terms.reconstruction, expected.reconstruction, rtol=RTOL, atol=0)
    assert terms.kl.shape == expected.kl.shape == (cfg.levels,)
    torch.testing.assert_close(terms.kl, expected.kl, rtol=RTOL, atol=ATOL)
    assert torch.all(expected.kl > 0)
    for (name, _), grad, expected_grad in zip(nets.named_parameters(), grads, expected_grads):
        scale = expected_grad.abs().max().item()
        torch.testing.assert_close(grad, expected_grad, rtol=RTOL, atol=RTOL * scale + ATOL, msg=lambda m: f"{name}: {m}")


def test_open_loop_rollout_matches_the_reference(tiny_cfg):
    cfg, video = three_levels(tiny_cfg)
    nets = CWVAENets(cfg).eval()
    run = TrainedRun(cfg, nets, model, guide, step=0)
    context, frames = video[:, :5], 14
    pyro.set_rng_seed(3)
    states = open_loop_states(run, context, frames)
    pyro.set_rng_seed(3)
    expected = reference.open_loop_states(nets, context, frames, cfg)
    assert states.shape == expected.shape == (2, frames, cfg.state_size)
    torch.testing.assert_close(states, expected, rtol=RTOL, atol=ATOL)
    pyro.set_rng_seed(4)  # the agreement comes from drawing the same noise: another seed gives other states
    assert not torch.allclose(reference.open_loop_states(nets, context, frames, cfg), expected, rtol=1e-3)
    np.testing.assert_array_equal(reference.decode(nets, expected, chunk=8), decode(run, expected))
