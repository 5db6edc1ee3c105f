"""KL balancing, free nats and per-level KL weights (the official code's kl_grad_post_perc, free_nats, beta):
each changes the training objective as its formula says, and never the reported loss and KLs."""
import pyro
import pytest
import torch

from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.errors import UserError
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets

ELBOS = ["trace", "meanfield"]


def terms_and_grads(cfg, nets, video, seed=3):
    pyro.set_rng_seed(seed)  # the same latent draws for every variant of the objective
    terms = elbo_terms(model, guide, video, nets, cfg)
    params = [p for _, p in nets.named_parameters()]
    return terms, torch.autograd.grad(terms.objective, params, allow_unused=True)


def per_sequence(terms, video):
    """The level KLs summed over one sequence: the quantity the official loss floors and frees."""
    return terms.kl * video.shape[1]


@pytest.mark.parametrize("elbo", ELBOS)
def test_neutral_shaping_gives_the_loss_and_its_gradient(tiny_cfg, video, elbo):
    cfg = tiny_cfg.replace(elbo=elbo)
    nets = CWVAENets(cfg)
    plain, plain_grads = terms_and_grads(cfg, nets, video)
    neutral, grads = terms_and_grads(cfg.replace(free_nats=0.0, kl_beta=[1.0, 1.0]), nets, video)
    torch.testing.assert_close(neutral.objective, plain.loss)
    for grad, want in zip(grads, plain_grads):
        torch.testing.assert_close(grad, want)


@pytest.mark.parametrize("elbo", ELBOS)
def test_half_balanced_kl_has_half_the_kl_gradient(tiny_cfg, video, elbo):
    """KL(sg q || p) and KL(q || sg p) split the KL's gradient between p and q: at 0.5 each, the objective's
    gradient is the reconstruction's plus half the KL's (while the floor of 1 nat is not reached)."""
    cfg = tiny_cfg.replace(elbo=elbo)
    nets = CWVAENets(cfg)
    plain, _ = terms_and_grads(cfg, nets, video)
    assert (0.5 * per_sequence(plain, video) > 1.0).all()  # the posterior's floor does not bite
    balanced, grads = terms_and_grads(cfg.replace(kl_balance=0.5), nets, video)
    params = list(nets.parameters())
    pyro.set_rng_seed(3)
    again = elbo_terms(model, guide, video, nets, cfg)
    expected = torch.autograd.grad(again.reconstruction + 0.5 * again.kl.sum(), params, allow_unused=True)
    torch.testing.assert_close(balanced.loss, plain.loss)  # the reported numbers do not change
    torch.testing.assert_close(balanced.kl, plain.kl)
    torch.testing.assert_close(balanced.objective, plain.loss)  # the value is the KL's; only the gradient moves
    for grad, want in zip(grads, expected):
        if want is None:
            assert grad is None or not grad.any()
        else:
            torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6 * want.abs().max().item())


@pytest.mark.parametrize("elbo", ELBOS)
def test_fully_posterior_balanced_kl_does_not_train_the_prior_heads(tiny_cfg, video, elbo):
    cfg = tiny_cfg.replace(elbo=elbo)
    nets = CWVAENets(cfg)
    _, plain_grads = terms_and_grads(cfg, nets, video)
    _, grads = terms_and_grads(cfg.replace(kl_balance=1.0), nets, video)
    names = [name for name, _ in nets.named_parameters()]
    prior_heads = [i for i, name in enumerate(names) if ".transition.hidden." in name or ".transition.head." in name]
    assert prior_heads and all(plain_grads[i].abs().sum() > 0 for i in prior_heads)  # they do learn without it
    assert all(grads[i] is None or not grads[i].any() for i in prior_heads)


@pytest.mark.parametrize("elbo", ELBOS)
def test_a_posterior_share_below_one_nat_is_floored_at_one(tiny_cfg, video, elbo):
    """With a = 0.01 every level's a KL(q || sg p) per sequence is below 1 nat, so the objective counts 1 nat for it
    (the official floor) and its gradient is the reconstruction's plus (1 - a) of the prior's share: the gradient
    at a = 0 (floored too) with the reconstruction's part mixed back in, g(a) = a g_rec + (1 - a) g(0)."""
    cfg, a = tiny_cfg.replace(elbo=elbo), 0.01
    nets = CWVAENets(cfg)
    plain, _ = terms_and_grads(cfg, nets, video)
    kl = per_sequence(plain, video).detach()
    assert (a * kl < 1.0).all()  # the floor bites at every level
    floored, grads = terms_and_grads(cfg.replace(kl_balance=a), nets, video)
    torch.testing.assert_close(floored.objective, plain.reconstruction + ((1 - a) * kl + 1.0).sum() / video.shape[1])
    _, grads_at_0 = terms_and_grads(cfg.replace(kl_balance=0.0), nets, video)
    pyro.set_rng_seed(3)
    params = list(nets.parameters())
    reconstruction_grads = torch.autograd.grad(elbo_terms(model, guide, video, nets, cfg).reconstruction, params,
                                               allow_unused=True)
    for param, grad, at_0, rec in zip(params, grads, grads_at_0, reconstruction_grads):
        grad, at_0, rec = (torch.zeros_like(param) if g is None else g for g in (grad, at_0, rec))
        want = a * rec + (1 - a) * at_0
        # g(a) and its mix are sums in different orders: their float32 rounding (the thread count changes it) is of
        # the order of 1e-7 of the largest gradient, and the smallest gradients are that small
        torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_free_nats_leave_the_kl_below_them_unpenalised(tiny_cfg, video):
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets = CWVAENets(cfg)
    plain, _ = terms_and_grads(cfg, nets, video)
    kl = per_sequence(plain, video).detach()
    free = float(kl.min() + kl.max()) / 2  # one level below the free nats, one above
    shaped, _ = terms_and_grads(cfg.replace(free_nats=free), nets, video)
    expected = plain.reconstruction + torch.clamp(kl - free, min=0).sum() / video.shape[1]
    torch.testing.assert_close(shaped.objective, expected)
    torch.testing.assert_close(shaped.loss, plain.loss)


def test_kl_beta_weights_each_level(tiny_cfg, video):
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets = CWVAENets(cfg)
    plain, _ = terms_and_grads(cfg, nets, video)
    shaped, _ = terms_and_grads(cfg.replace(kl_beta=[2.0, 0.25]), nets, video)
    torch.testing.assert_close(shaped.objective, plain.reconstruction + 2.0 * plain.kl[0] + 0.25 * plain.kl[1])


def test_free_nats_come_off_each_level_before_its_weight(tiny_cfg, video):
    """The official loss: beta_l * max(0, KL_l - free_nats), summed over the levels."""
    cfg = tiny_cfg.replace(elbo="meanfield")
    nets = CWVAENets(cfg)
    plain, _ = terms_and_grads(cfg, nets, video)
    kl = per_sequence(plain, video).detach()
    free, beta = float(kl.min()) / 2, torch.tensor([2.0, 0.25])
    shaped, _ = terms_and_grads(cfg.replace(free_nats=free, kl_beta=beta.tolist()), nets, video)
    expected = plain.reconstruction + (beta * torch.clamp(kl - free, min=0)).sum() / video.shape[1]
    torch.testing.assert_close(shaped.objective, expected)


@pytest.mark.parametrize("elbo", ELBOS)
def test_a_latent_outside_the_levels_stays_in_the_shaped_objective(tiny_cfg, video, elbo):
    """Shaping reweights the levels' KLs only: a variant's latent named like no level keeps its whole KL in the
    objective, so neutral shaping still gives the loss and its gradient."""
    from tests.test_elbo import guide_with_w, model_with_w
    cfg = tiny_cfg.replace(elbo=elbo)
    nets = CWVAENets(cfg)
    params = list(nets.parameters())
    for shaping in (dict(free_nats=0.0), dict(kl_beta=[1.0, 1.0])):
        pyro.set_rng_seed(3)
        terms = elbo_terms(model_with_w, guide_with_w, video, nets, cfg.replace(**shaping))
        torch.testing.assert_close(terms.objective, terms.loss)
        pyro.set_rng_seed(3)
        plain = elbo_terms(model_with_w, guide_with_w, video, nets, cfg)
        for grad, want in zip(torch.autograd.grad(terms.objective, params, allow_unused=True),
                              torch.autograd.grad(plain.loss, params, allow_unused=True)):
            assert (grad is None) == (want is None) and (grad is None or torch.allclose(grad, want))


@pytest.mark.parametrize("change,message", [
    (dict(kl_balance=1.5), "--kl-balance must lie between 0 and 1"),
    (dict(free_nats=-1.0), "--free-nats must not be negative"),
    (dict(kl_beta=[1.0]), "--kl-beta needs one non-negative weight per level"),
    (dict(kl_beta=[1.0, -1.0]), "--kl-beta needs one non-negative weight per level"),
    (dict(kl_beta=[1.0, 1.0, 1.0]), "--kl-beta needs one non-negative weight per level"),
])


def test_bad_shaping_options_are_refused(tiny_cfg, change, message):
    with pytest.raises(UserError, match=message):
        tiny_cfg.replace(**change).validate()
