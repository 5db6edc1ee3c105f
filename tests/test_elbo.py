"""The ELBO terms against Pyro's own estimators and the analytic KL against a Monte-Carlo estimate."""
import pyro
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from pyro_cwvae.elbo import elbo_terms, level_of
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.nets import CWVAENets


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO), ("meanfield", pyro.infer.TraceMeanField_ELBO)])
def test_terms_sum_to_pyros_elbo(tiny_cfg, video, name, estimator):
    cfg = tiny_cfg.replace(elbo=name)
    nets = CWVAENets(cfg)
    pyro.set_rng_seed(1)
    expected = estimator().differentiable_loss(model, guide, video, nets, cfg) / video.shape[:2].numel()
    expected_grads = torch.autograd.grad(expected, list(nets.parameters()))
    pyro.set_rng_seed(1)
    terms = elbo_terms(model, guide, video, nets, cfg)
    grads = torch.autograd.grad(terms.loss, list(nets.parameters()))
    assert torch.allclose(terms.loss, expected, rtol=1e-6)
    assert torch.allclose(terms.loss, terms.reconstruction + terms.kl.sum(), rtol=1e-6)
    assert terms.kl.shape == (cfg.levels,)
    for g, e in zip(grads, expected_grads):
        assert torch.allclose(g, e, rtol=1e-4, atol=1e-6)


def test_analytic_kl_matches_monte_carlo(tiny_cfg, video):
    """The per-site KL the meanfield ELBO uses equals E_q[log q - log p], estimated with many samples."""
    nets = CWVAENets(tiny_cfg)
    guide_trace = poutine.trace(guide).get_trace(video, nets, tiny_cfg)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, tiny_cfg)
    torch.manual_seed(0)
    for name in ["s_1_0", "s_1_5", "s_2_2"]:
        q, p = guide_trace.nodes[name]["fn"], model_trace.nodes[name]["fn"]
        analytic = kl_divergence(q, p).detach()
        z = q.sample((20000,))
        monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0).detach()
        stderr = (q.log_prob(z) - p.log_prob(z)).std(0).detach() / 20000 ** 0.5
        assert torch.all((analytic - monte_carlo).abs() < 5 * stderr + 1e-4), (name, analytic, monte_carlo)
        assert torch.all(analytic >= 0)


def test_level_of_reads_site_names():
    assert level_of("s_2_36") == 2
    assert level_of("x") is None and level_of("s_a_1") is None
