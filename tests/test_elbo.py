"""The ELBO terms against Pyro's own estimators and the analytic KL against a Monte-Carlo estimate."""
import contextlib
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from torch.distributions import kl_divergence

from pyro_cwvae.model.elbo import elbo_terms, level_of
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.model.step_sharing import sharing_steps
from tests.conftest import count_gru_steps


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO),
                                            ("meanfield", pyro.infer.TraceMeanField_ELBO)])


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


def model_with_w(video, nets, cfg, *args, **kwargs):
    """The packaged model with one more latent, w ~ N(0, I_3), whose name fits no level."""
    states = model(video, nets, cfg, *args, **kwargs)
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    return states


def guide_with_w(video, nets, cfg, *args, **kwargs):
    states = guide(video, nets, cfg, *args, **kwargs)
    pyro.sample("w", dist.Normal(torch.full((3,), 5.0), 0.1).to_event(1))  # drawn last: the levels' draws as without
    return states


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO),
                                            ("meanfield", pyro.infer.TraceMeanField_ELBO)])


def test_a_variants_latent_outside_the_levels_counts_in_the_loss(tiny_cfg, video, name, estimator):
    """A variant's latent site named like no level (here w) is in the loss, as in Pyro's ELBO, and in no level's KL;
    under meanfield its term is KL(N(5, 0.1) || N(0, 1)) of each of its 3 coordinates, in closed form."""
    cfg = tiny_cfg.replace(elbo=name)
    nets = CWVAENets(cfg)
    pyro.set_rng_seed(1)
    expected = estimator().differentiable_loss(model_with_w, guide_with_w, video, nets, cfg) / video.shape[:2].numel()
    pyro.set_rng_seed(1)
    terms = elbo_terms(model_with_w, guide_with_w, video, nets, cfg)
    pyro.set_rng_seed(1)
    without_w = elbo_terms(model, guide, video, nets, cfg)
    assert terms.kl.shape == (cfg.levels,)
    torch.testing.assert_close(terms.loss, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(terms.kl, without_w.kl)
    if name == "meanfield":
        w_kl = 3 * (math.log(1 / 0.1) + (0.1 ** 2 + 5.0 ** 2) / 2 - 0.5)  # 42.9 nats
        torch.testing.assert_close(terms.loss - without_w.loss, torch.tensor(w_kl / video.shape[:2].numel()),
                                   rtol=1e-3, atol=0)


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO),
                                            ("meanfield", pyro.infer.TraceMeanField_ELBO)])
@pytest.mark.parametrize("handler", [lambda fn: poutine.scale(fn, scale=0.5),
                                     lambda fn: poutine.mask(fn, mask=torch.tensor([True, False]))],
                         ids=["scale", "mask"])
def test_a_model_scaled_or_masked_apart_from_its_guide_keeps_pyros_elbo(tiny_cfg, video, name, estimator, handler):
    """Pyro scales and masks log p by the model site's scale and mask, log q (or the analytic KL) by the guide
    site's: the packaged programs scale both alike, a variant need not."""
    cfg = tiny_cfg.replace(elbo=name)
    nets = CWVAENets(cfg)
    variant = handler(model)  # the packaged model with a scale or a mask that the guide's sites do not get
    pyro.set_rng_seed(1)
    expected = estimator().differentiable_loss(variant, guide, video, nets, cfg) / video.shape[:2].numel()
    pyro.set_rng_seed(1)
    same = estimator().differentiable_loss(model, guide, video, nets, cfg) / video.shape[:2].numel()
    assert not torch.isclose(expected, same, rtol=1e-3)  # the handler changes the ELBO
    pyro.set_rng_seed(1)
    torch.testing.assert_close(elbo_terms(variant, guide, video, nets, cfg).loss, expected, rtol=1e-5, atol=0)


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


def test_the_model_reuses_the_guides_gru_steps(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    calls = count_gru_steps(nets)
    elbo_terms(model, guide, video, nets, tiny_cfg)
    steps = sum(tiny_cfg.clock.num_steps(level, video.shape[1]) for level in range(1, tiny_cfg.levels + 1))
    assert calls[0] == steps  # once per latent site, not once in the guide and again in the model
    pyro.infer.Trace_ELBO().differentiable_loss(model, guide, video, nets, tiny_cfg)
    assert calls[0] == 3 * steps  # outside elbo_terms both programs compute their own


def variant_model(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
    """The packaged model with a prior that ignores the levels above: its GRU inputs differ from the guide's."""
    B, T = video.shape[:2]
    initial = nets.initial_state(B)
    with pyro.plate("batch", B):
        for level in range(cfg.levels, 0, -1):
            cell = nets.level(level)
            state, states = initial, []
            for step in pyro.markov(range(cfg.clock.num_steps(level, T))):
                h = cell.deterministic(state, initial)
                z = pyro.sample(cfg.clock.site_name(level, cfg.clock.frame(level, step)),
                                pyro.distributions.Normal(*cell.prior(h)).to_event(1))
                state = (z, h)
                states.append(state)
        level1 = torch.stack([torch.cat(state, -1) for state in states], 1)
        pyro.sample("x", pyro.distributions.Normal(nets.decoder(level1), cfg.dec_std).to_event(4), obs=video)


def priors(model, video, nets, cfg, sharing: bool) -> dict[str, torch.Tensor]:
    """The prior loc of every latent site of ``model`` replayed on the guide's samples."""
    pyro.set_rng_seed(2)
    with sharing_steps(nets) if sharing else contextlib.nullcontext():
        guide_trace = poutine.trace(guide).get_trace(video, nets, cfg)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, cfg)
    return {name: site["fn"].base_dist.loc for name, site in model_trace.nodes.items() if level_of(name)}


@pytest.mark.parametrize("program", [model, variant_model])
def test_sharing_the_gru_steps_changes_no_prior(tiny_cfg, video, program):
    """The reuse is keyed on the very input tensors, so a model that feeds its GRU differently is not fooled."""
    nets = CWVAENets(tiny_cfg)
    shared, recomputed = (priors(program, video, nets, tiny_cfg, sharing) for sharing in (True, False))
    assert shared.keys() == recomputed.keys() and len(shared) == 4 + 8  # T = 8, k = 2
    for name in shared:
        torch.testing.assert_close(shared[name], recomputed[name], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO),
                                            ("meanfield", pyro.infer.TraceMeanField_ELBO)])


def test_each_level_is_summed_in_one_computation_equal_to_pyros(tiny_cfg, video, name, estimator, monkeypatch):
    """The packaged programs' sites are stacked per level (one KL or one pair of log-densities per level, not one
    per site), under a warm-up's KL scale as a number and as a device tensor, and the terms still sum to Pyro's."""
    from pyro_cwvae.model import elbo as elbo_module
    cfg = tiny_cfg.replace(elbo=name)
    nets = CWVAENets(cfg)
    pyro.set_rng_seed(1)
    expected = estimator().differentiable_loss(model, guide, video, nets, cfg, 0.3) / video.shape[:2].numel()
    calls = []
    kl_divergence_ = elbo_module.kl_divergence
    monkeypatch.setattr(elbo_module, "kl_divergence", lambda q, p: calls.append(q.batch_shape) or kl_divergence_(q, p))
    packed = []
    for scale in (0.3, torch.tensor(0.3)):
        pyro.set_rng_seed(1)
        packed.append(elbo_terms(model, guide, video, nets, cfg, scale).pack())
    assert torch.equal(packed[0], packed[1])
    assert torch.allclose(packed[0][0], expected, rtol=1e-6)
    if name == "meanfield":  # one call per level and scale, each over all the level's steps
        steps = [cfg.clock.num_steps(level, video.shape[1]) for level in range(1, cfg.levels + 1)]
        assert sorted(shape[0] for shape in calls) == sorted(2 * steps)


class HalveFirstSite(Messenger):
    """Scales the site s_1_0 by 1/2, as a subsampled or annealed site would be."""

    def _process_message(self, msg):
        if msg["name"] == "s_1_0":
            msg["scale"] = 0.5 * msg["scale"]


def first_site_halved(program):
    def halved(*args, **kwargs):
        with HalveFirstSite():
            return program(*args, **kwargs)
    return halved


def test_sites_that_cannot_be_stacked_are_summed_one_by_one(tiny_cfg, video, monkeypatch):
    """A level whose sites differ (level 1's first site scaled apart from the others) is summed site by site, and
    the terms still equal Pyro's."""
    from pyro_cwvae.model import elbo as elbo_module
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets = CWVAENets(cfg)
    halved_model, halved_guide = first_site_halved(model), first_site_halved(guide)
    pyro.set_rng_seed(1)
    expected = pyro.infer.TraceMeanField_ELBO().differentiable_loss(halved_model, halved_guide, video, nets, cfg)
    calls = []
    kl_divergence_ = elbo_module.kl_divergence
    monkeypatch.setattr(elbo_module, "kl_divergence", lambda q, p: calls.append(q.batch_shape) or kl_divergence_(q, p))
    pyro.set_rng_seed(1)
    terms = elbo_terms(halved_model, halved_guide, video, nets, cfg)
    assert torch.allclose(terms.loss * video.shape[:2].numel(), expected, rtol=1e-6)
    assert len(calls) == cfg.clock.num_steps(1, video.shape[1]) + 1  # level 1 site by site, level 2 stacked


def masked(program, mask: torch.Tensor):
    def program_under_mask(*args, **kwargs):
        with poutine.mask(mask=mask):
            return program(*args, **kwargs)
    return program_under_mask


@pytest.mark.parametrize("name,estimator", [("trace", pyro.infer.Trace_ELBO),
                                            ("meanfield", pyro.infer.TraceMeanField_ELBO)])
def test_masked_sites_count_as_pyro_counts_them(tiny_cfg, video, name, estimator):
    """A variant that masks out one sequence's latent sites (poutine.mask): the loss leaves their KL out, as Pyro's
    ELBOs do, whether or not the sites of a level are summed in one computation."""
    cfg = tiny_cfg.replace(elbo=name)
    nets = CWVAENets(cfg)
    keep_first = torch.tensor([True, False])
    masked_model, masked_guide = masked(model, keep_first), masked(guide, keep_first)
    pyro.set_rng_seed(1)
    expected = estimator().differentiable_loss(masked_model, masked_guide, video, nets, cfg)
    pyro.set_rng_seed(1)
    terms = elbo_terms(masked_model, masked_guide, video, nets, cfg)
    pyro.set_rng_seed(1)
    unmasked = elbo_terms(model, guide, video, nets, cfg)
    torch.testing.assert_close(terms.loss * video.shape[:2].numel(), expected, rtol=1e-6, atol=0)
    assert (terms.kl < unmasked.kl).all()  # the second sequence's KL is left out
