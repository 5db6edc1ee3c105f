"""The GRU-step sharing of ``sharing_steps(nets)``: the model reuses the guide's steps, counted, and a step is never
reused where its result could differ (an input edited in place, another grad mode or autocast state, changed
weights, a stochastic layer, a copy of the networks); the ELBO and its gradients are unchanged. The prior heads of
the steps taken are computed in one batch a level, and alone where a row of that batch could differ."""
import contextlib
import copy
import pickle

import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_cwvae.model.elbo import elbo_terms, level_of
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets, Transition
from pyro_cwvae.model.step_sharing import sharing_steps, step_counts
from tests.conftest import count_gru_steps


def step_inputs(cfg, batch: int = 3):
    """A previous state (z, h) and a state from above (z, h) of level 1, as fresh tensors."""
    generator = torch.Generator().manual_seed(5)
    z, h, z_above, h_above = (torch.randn(batch, size, generator=generator) for size in [cfg.z_size, cfg.h_size] * 2)
    return (z, h), (z_above, h_above)


def sharing(nets: CWVAENets, on: bool) -> contextlib.AbstractContextManager:
    return sharing_steps(nets) if on else contextlib.nullcontext()


def test_a_step_on_the_same_inputs_is_reused(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    previous, above = step_inputs(tiny_cfg)
    calls = count_gru_steps(nets)
    with sharing_steps(nets):
        first = transition.deterministic(previous, above)
        assert transition.deterministic(previous, above) is first
    assert calls[0] == 1
    assert step_counts(nets) == {"hits": 1, "misses": 1}


def test_an_input_edited_in_place_is_not_reused(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    previous, above = step_inputs(tiny_cfg)
    with sharing_steps(nets):
        first = transition.deterministic(previous, above)
        previous[0].add_(1.0)  # e.g. a variant that clamps z in place
        second = transition.deterministic(previous, above)
    torch.testing.assert_close(second, transition.deterministic(previous, above), rtol=0, atol=0)
    assert not torch.allclose(first, second)
    assert step_counts(nets) == {"hits": 0, "misses": 2}


def test_an_initial_state_edited_in_place_is_not_handed_out_again(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    with sharing_steps(nets):
        z, h = nets.initial_state(2)
        assert nets.initial_state(2)[0] is z  # shared, so that first steps are shared too
        z.add_(1.0)
        assert torch.count_nonzero(nets.initial_state(2)[0]) == 0


def gru_gradients(nets: CWVAENets, video, cfg, sharing_on: bool) -> list[torch.Tensor]:
    """Gradients of the model's log p(z | h) at the guide's samples, the guide traced without grad, as in a
    program that evaluates the posterior under ``torch.no_grad()`` and the prior with it."""
    pyro.set_rng_seed(4)
    with sharing(nets, sharing_on):
        with torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(video, nets, cfg)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, cfg)
    log_prior = sum(site["fn"].log_prob(site["value"]).sum() for name, site in model_trace.nodes.items()
                    if level_of(name))
    weights = [p for level in nets.levels for p in level.transition.gru.parameters()]
    return torch.autograd.grad(log_prior, weights, allow_unused=True)


def test_a_step_taken_without_grad_is_not_reused_with_grad(tiny_cfg, video):
    nets = CWVAENets(tiny_cfg)
    shared, recomputed = (gru_gradients(nets, video, tiny_cfg, on) for on in (True, False))
    for got, expected in zip(shared, recomputed):
        assert got is not None, "log p(z | h) sends no gradient to the GRU"
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    assert step_counts(nets)["hits"] == 0


def test_a_step_under_autocast_is_not_reused_without_it(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    previous, above = step_inputs(tiny_cfg)
    with sharing_steps(nets):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = transition.deterministic(previous, above)
        full = transition.deterministic(previous, above)
    torch.testing.assert_close(full, transition.deterministic(previous, above), rtol=0, atol=0)
    assert not torch.equal(low, full)  # the test sees a difference: bf16 rounding
    assert step_counts(nets) == {"hits": 0, "misses": 2}


def trace_elbo_loss(nets, video, cfg) -> torch.Tensor:
    pyro.set_rng_seed(3)
    return pyro.infer.Trace_ELBO().differentiable_loss(model, guide, video, nets, cfg)


def elbo_terms_loss(nets, video, cfg) -> torch.Tensor:
    pyro.set_rng_seed(3)
    return elbo_terms(model, guide, video, nets, cfg).loss


@pytest.mark.parametrize("loss,fused", [
    (trace_elbo_loss, False),  # one block: the parameters' versions change with the optimizer step
    (elbo_terms_loss, True),  # nested blocks, a fused step that bumps no version: the inner block forgets
])
def test_no_step_is_reused_after_an_optimizer_step(tiny_cfg, video, loss, fused):
    nets = CWVAENets(tiny_cfg)
    optimizer = torch.optim.Adam(nets.parameters(), lr=1e-2, fused=fused)
    with sharing_steps(nets):  # e.g. around a whole training loop
        loss(nets, video, tiny_cfg).backward()
        optimizer.step()
        after_step = loss(nets, video, tiny_cfg)
    recomputed = loss(nets, video, tiny_cfg)  # outside the block: computed afresh
    torch.testing.assert_close(after_step, recomputed, rtol=1e-6, atol=0)
    assert step_counts(nets)["hits"] > 0  # the sharing itself stayed on


@pytest.mark.parametrize("grad", [True, False])
def test_a_copy_of_the_networks_made_inside_a_block_shares_nothing_outside_it(tiny_cfg, grad):
    nets = CWVAENets(tiny_cfg)
    previous, above = step_inputs(tiny_cfg)
    with sharing_steps(nets), torch.set_grad_enabled(grad):
        nets.level(1).transition.deterministic(previous, above)
        copied = copy.deepcopy(nets)
    calls = count_gru_steps(copied)
    for _ in range(2):
        copied.level(1).transition.deterministic(previous, above)
    assert calls[0] == 2
    assert step_counts(copied) == {"hits": 0, "misses": 0}


def test_a_stochastic_step_is_not_reused_in_training_mode(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    transition.inp = nn.Sequential(transition.inp, nn.Dropout(0.5))  # a variant with dropout before the GRU
    previous, above = step_inputs(tiny_cfg)

    def two_steps(sharing_on: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        with sharing(nets, sharing_on):
            return transition.deterministic(previous, above), transition.deterministic(previous, above)

    shared, recomputed = two_steps(True), two_steps(False)
    assert not torch.equal(*recomputed)  # two dropout masks
    for got, expected in zip(shared, recomputed):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert step_counts(nets)["hits"] == 0
    nets.eval()  # dropout off: the step is deterministic and shared again
    first, second = two_steps(True)
    assert second is first and step_counts(nets)["hits"] == 1


def test_programs_under_inference_mode_share_nothing(tiny_cfg, video):
    """Inference tensors have no version counter: their steps are computed, never shared (and never fail)."""
    nets = CWVAENets(tiny_cfg)
    calls = count_gru_steps(nets)
    with torch.inference_mode(), sharing_steps(nets):
        guide_trace = poutine.trace(guide).get_trace(video, nets, tiny_cfg)
        poutine.replay(model, trace=guide_trace)(video, nets, tiny_cfg)
    assert calls[0] == 2 * (8 + 4)  # T = 8, k = 2: each program takes its own steps
    assert step_counts(nets) == {"hits": 0, "misses": 0}


@pytest.mark.parametrize("levels", [2, 3])
def test_elbo_terms_takes_each_gru_step_once(tiny_cfg, video, levels):
    """Under elbo_terms every model step is a hit: one GRU call per latent site, one miss (guide) and one hit
    (model) per site."""
    cfg = tiny_cfg.replace(levels=levels)
    nets = CWVAENets(cfg)
    calls = count_gru_steps(nets)
    elbo_terms(model, guide, video, nets, cfg)
    sites = sum(cfg.clock.num_steps(level, video.shape[1]) for level in range(1, levels + 1))
    assert calls[0] == sites
    assert step_counts(nets) == {"hits": sites, "misses": sites}


def test_a_block_leaves_the_networks_as_they_were_and_pickles_plain(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    with sharing_steps(nets):
        with sharing_steps(nets):  # nested: the outer block still shares after the inner one
            pass
        assert type(nets) is not CWVAENets  # the modules joined the block
        previous, above = step_inputs(tiny_cfg)
        first = nets.level(1).transition.deterministic(previous, above)
        assert nets.level(1).transition.deterministic(previous, above) is first
        copied = pickle.loads(pickle.dumps(nets))
    assert type(nets) is type(copied) is CWVAENets
    assert all(type(level.transition) is Transition for level in [*nets.levels, *copied.levels])
    assert step_counts(nets) == {"hits": 1, "misses": 1}


def test_networks_without_transitions_share_nothing(tiny_cfg, video):
    """A variant's networks need not have the standard levels: their steps are simply taken every time."""
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = nn.GRUCell(4, 4)

    nets = Recurrent()
    x = torch.randn(2, 4)
    with sharing_steps(nets):
        assert not torch.equal(nets.gru(x), nets.gru(x, nets.gru(x)))
    assert type(nets) is Recurrent and step_counts(nets) == {"hits": 0, "misses": 0}


def count_prior_heads(nets: CWVAENets) -> list[int]:
    """Calls of the prior heads' hidden layers, and rows seen, of every level (forward hooks)."""
    calls = [0, 0]

    def hook(module, inputs, output):
        calls[0] += 1
        calls[1] += inputs[0].shape[0]

    for level in range(1, len(nets.levels) + 1):
        nets.level(level).transition.hidden.register_forward_hook(hook)
    return calls


def stepped_hs(nets: CWVAENets, cfg, steps: int = 4) -> list[torch.Tensor]:
    """h_1..h_steps of level 1 taken in a block, each from the last (the guide's order)."""
    transition = nets.level(1).transition
    (z, h), above = step_inputs(cfg)
    hs = []
    for _ in range(steps):
        h = transition.deterministic((z, h), above)
        hs.append(h)
    return hs


@pytest.mark.parametrize("levels", [2, 3])
def test_elbo_terms_computes_the_prior_heads_of_a_level_in_one_batch(tiny_cfg, video, levels):
    """The model asks for the prior of every site, step by step; each level's heads run once, on all its rows."""
    cfg = tiny_cfg.replace(levels=levels)
    nets = CWVAENets(cfg)
    heads = count_prior_heads(nets)
    elbo_terms(model, guide, video, nets, cfg)
    sites = sum(cfg.clock.num_steps(level, video.shape[1]) for level in range(1, levels + 1))
    assert heads == [levels, sites * video.shape[0]]


def test_a_prior_head_from_the_batch_equals_one_computed_alone(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg)
        batched = [transition(h) for h in hs]
    for h, (loc, scale) in zip(hs, batched):
        alone = Transition.forward(transition, h)  # the plain class's head, outside any batch
        torch.testing.assert_close(loc, alone[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(scale, alone[1], rtol=0, atol=1e-6)
    loc_sum = sum(loc.sum() for loc, _ in batched)
    loc_sum.backward()  # gradients reach the weights through the rows of the batch
    assert nets.level(1).transition.hidden.weight.grad.abs().sum() > 0


def test_a_prior_head_asked_for_without_grad_leaves_the_others_their_gradients(tiny_cfg):
    """The h's were taken with grad; a prior asked for under no_grad (as a watcher might) is made apart from them, and
    a later request with grad still gets a row that trains the head's weights."""
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=3)
        with torch.no_grad():
            quiet, _ = transition(hs[0])
        loc, _ = transition(hs[1])
        assert not quiet.requires_grad and loc.requires_grad
        torch.testing.assert_close(quiet, Transition.forward(transition, hs[0])[0].detach(), rtol=0, atol=1e-6)
        torch.testing.assert_close(loc, Transition.forward(transition, hs[1])[0], rtol=0, atol=1e-6)
        loc.sum().backward()
    assert transition.hidden.weight.grad.abs().sum() > 0


def test_a_prior_head_is_computed_alone_for_an_h_not_in_the_batch(tiny_cfg):
    """An h taken after the batch was made, one edited in place since, and one from outside the block's steps."""
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    heads = count_prior_heads(nets)
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=3)
        transition(hs[0])  # the batch of the 3 h's
        assert heads == [1, 3 * hs[0].shape[0]]
        later = transition.deterministic((torch.zeros(3, tiny_cfg.z_size), hs[-1]), step_inputs(tiny_cfg)[1])
        with torch.no_grad():
            hs[1].add_(1.0)
        outside = torch.randn_like(hs[0])
        for h in (later, hs[1], outside):
            loc, _ = transition(h)
            torch.testing.assert_close(loc, Transition.forward(transition, h)[0], rtol=0, atol=0)
        assert heads[0] == 1 + 3 + 3  # three alone, each checked against one more alone
        transition(hs[2])  # still in the batch
        assert heads[0] == 7


@pytest.mark.parametrize("layer", [nn.BatchNorm1d, lambda size: nn.Dropout(0.5)])
def test_a_prior_head_whose_rows_meet_or_draw_noise_is_computed_step_by_step_in_training(tiny_cfg, layer):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    transition.hidden = nn.Sequential(transition.hidden, layer(tiny_cfg.embed_size))
    heads = count_prior_heads(nets)  # counts the Sequential's calls
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=3)
        for h in hs:
            transition(h)
    assert heads[0] == 3
    nets.eval()  # batch norm with its running statistics, dropout off: rows are independent again
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=3)
        for h in hs:
            transition(h)
    assert heads[0] == 4


def traced_loss(nets, cfg, video) -> torch.Tensor:
    """The guide, then the model replayed on its samples, in the block already open: - log p + log q."""
    guide_trace = poutine.trace(guide).get_trace(video, nets, cfg)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(video, nets, cfg)
    return guide_trace.log_prob_sum() - model_trace.log_prob_sum()


def test_an_optimizer_step_or_another_batch_size_in_one_block_batches_only_the_h_s_taken_alike(tiny_cfg, video):
    """Passes with an optimizer step between them, and on a smaller batch, all in one block: each pass's priors
    come from its own h's (a batch of the first pass's would back-propagate into a freed graph, and h's of two
    batch sizes cannot be rows of one batch)."""
    nets = CWVAENets(tiny_cfg)
    optimizer = torch.optim.SGD(nets.parameters(), lr=1e-3)
    heads = count_prior_heads(nets)
    with sharing_steps(nets):
        for batch in (video, video, video[:1]):
            optimizer.zero_grad()
            traced_loss(nets, tiny_cfg, batch).backward()
            optimizer.step()
        with torch.no_grad():
            poutine.trace(guide).get_trace(video, nets, tiny_cfg)  # h's of two batch sizes, then the model on one
            traced_loss(nets, tiny_cfg, video[:1])
    assert heads[0] == 4 * tiny_cfg.levels  # one batch a level a pass


class SharedScale(nn.Module):
    """A prior head whose scale is one learned number for all rows (not a row each)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head, self.std = head, nn.Parameter(torch.tensor(0.5))

    def forward(self, hidden):
        return self.head(hidden)[0], self.std


class WithAbove(Transition):
    """A variant prior head that reads the state above as well."""

    def forward(self, h, above=None):
        loc, scale = super().forward(h)
        return loc if above is None else loc + above[0].mean(), scale


class Centred(Transition):
    """A variant prior head of h alone whose rows meet: its loc is centred over the batch it is given."""

    def forward(self, h):
        loc, scale = super().forward(h)
        return loc - loc.mean(0, keepdim=True), scale


@pytest.mark.parametrize("variant", ["running statistics off", "shared scale", "own forward", "own forward of h"])
def test_a_variant_head_that_is_not_rows_of_the_packaged_one_is_computed_alone(tiny_cfg, variant):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    if variant == "running statistics off":  # batch norm of the batch at hand, in eval mode too
        transition.hidden = nn.Sequential(transition.hidden,
                                          nn.BatchNorm1d(tiny_cfg.embed_size, track_running_stats=False))
        nets.eval()
    elif variant == "shared scale":
        transition.head = SharedScale(transition.head)
    else:  # called with h alone, Centred's forward looks like the packaged one's: only its class tells them apart
        transition.__class__ = WithAbove if variant == "own forward" else Centred
    with sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=3)
        above = step_inputs(tiny_cfg)[1]
        got = [transition(h, above) if variant == "own forward" else transition(h) for h in hs]
    for h, (loc, scale) in zip(hs, got):
        if variant == "own forward":  # the variant's own forward, on this h alone
            alone = WithAbove.forward(transition, h, above)
        elif variant == "own forward of h":
            alone = Centred.forward(transition, h)
        else:
            alone = transition(h)
        torch.testing.assert_close(loc, alone[0], rtol=0, atol=0)
        torch.testing.assert_close(scale, alone[1], rtol=0, atol=0)


def test_a_row_edited_in_place_without_grad_is_not_handed_out_again(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    with torch.no_grad(), sharing_steps(nets):
        hs = stepped_hs(nets, tiny_cfg, steps=2)
        loc, _ = transition(hs[0])
        loc.add_(1.0)
        for h in hs:
            torch.testing.assert_close(transition(h)[0], Transition.forward(transition, h)[0], rtol=0, atol=1e-6)


def test_a_step_taken_in_inference_mode_gets_its_prior_head_alone(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    transition = nets.level(1).transition
    (z, h), above = step_inputs(tiny_cfg)
    with sharing_steps(nets), torch.no_grad():  # with grad, torch refuses inference tensors itself
        with torch.inference_mode():
            inferred = transition.deterministic((z, h), above)
            inside = transition(inferred)
        outside = transition(inferred)
        alone = Transition.forward(transition, inferred)
    for loc, _ in (inside, outside):
        torch.testing.assert_close(loc, alone[0], rtol=0, atol=0)
