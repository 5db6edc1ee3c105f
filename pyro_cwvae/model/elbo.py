"""The ELBO of eq. 5, split into the terms a user wants to watch: reconstruction and the KL of each level.

The estimators are Pyro's own: the model and guide are traced as ``pyro.infer.Trace_ELBO`` and
``TraceMeanField_ELBO`` trace them (``traces``, after ``get_importance_trace``), and the terms are summed from those
traces:

- ``trace``: KL_l = sum over level-l sites of log q(z) - log p(z) at the guide's sample (Monte Carlo);
- ``meanfield``: KL_l = sum over level-l sites of KL(q || p), analytic via ``torch.distributions`` where it knows
  the pair of distributions, else log q(z) - log p(z) as under ``trace`` (as ``TraceMeanField_ELBO`` falls back).

Their sum is the loss of the corresponding Pyro ELBO (tests check it against Pyro's), returned as tensors so
that a training step never waits for the device. All terms are divided by batch x frames: nats per frame.

A level's sites are summed in one computation where they allow it (``stacked_sites``: Normal pairs of one shape,
unmasked, as the packaged programs make them): their parameters stacked, one KL or one pair of log-densities for the
level instead of one per site. That is the same sum, in another order of additions; on a GPU, where the step waits
on launching kernels, it is thousands of kernels fewer a step (``benchmarks/graph.py --profile``; docs/benchmarks.md).
For the same reason the latent sites' log-densities are computed only where a term reads them.

The official code can shape the KL part of the training objective in three ways (all off in its configs); each is
an option here, computed from the same traces, and changes only ``objective`` (what is differentiated), never the
reported ``loss`` and ``kl``:

- ``kl_balance`` a (official ``kl_grad_post_perc``): each level's KL is split into (1 - a) KL(sg(q) || p), which
  trains only the prior, and a KL(q || sg(p)), which trains only the posterior, the latter floored at 1 nat per
  sequence as the official code does; ``sg`` stops gradients. Its value equals the KL; its gradient does not.
- ``free_nats`` F: a level's KL per sequence counts only above F nats: max(0, KL - F).
- ``kl_beta`` (b_1, ..., b_L): level l's KL term is weighted by b_l.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import pyro.distributions as dist
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape
from torch.distributions import Independent, Normal, kl_divergence

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.clock import Clock
from pyro_cwvae.model.step_sharing import sharing_steps


@dataclass
class ElboTerms:
    loss: torch.Tensor  # negative ELBO, nats per frame
    reconstruction: torch.Tensor  # -log p(x | s^1), nats per frame
    kl: torch.Tensor  # (L,) KL of each level, nats per frame
    objective: torch.Tensor  # what training minimises: the loss, or its KL-shaped version (see the module docstring)

    def pack(self) -> torch.Tensor:
        """The terms as one tensor (a module's output, one transfer from the device): ``unpack`` reads it."""
        return torch.cat([self.loss[None], self.reconstruction[None], self.objective[None], self.kl])

    @classmethod
    def unpack(cls, packed) -> "ElboTerms":
        """The terms of ``pack``'s tensor (or of rows of them, stacked, as tensors or arrays)."""
        return cls(loss=packed[..., 0], reconstruction=packed[..., 1], objective=packed[..., 2], kl=packed[..., 3:])


def level_of(site_name: str) -> int | None:
    """1-based level of a latent site ``s_{l}_{t}``; None for sites of other names."""
    parsed = Clock.parse_site(site_name)
    return parsed[0] if parsed else None


def elbo_terms(model, guide, video, nets, cfg, kl_scale: float = 1.0) -> ElboTerms:
    """Negative ELBO of ``video`` (B, T, C, 64, 64) and its terms, differentiable."""
    args = (video, nets, cfg, kl_scale)
    with sharing_steps(nets):  # the model reuses the guide's GRU steps
        model_trace, guide_trace = traces(model, guide, args)
    check_sites_match(model_trace, guide_trace, cfg)
    batch, frames = video.shape[0], video.shape[0] * video.shape[1]
    reconstruction = video.new_zeros(())
    per_level = [[] for _ in range(cfg.levels + 1)]  # index 0: latent sites of a variant that fit no level
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            reconstruction = reconstruction - site["log_prob_sum"]
            continue
        level = level_of(name)
        per_level[level if level is not None and level <= cfg.levels else 0].append((guide_trace.nodes[name], site))
    kl = torch.stack([summed_kl(sites, cfg.elbo, video.new_zeros(())) for sites in per_level])
    loss = reconstruction + kl.sum()
    shaping = cfg.kl_balance is not None or cfg.free_nats is not None or cfg.kl_beta is not None
    objective = loss if not shaping else reconstruction + kl[0] + sum(
        shaped_kl(sites, kl[level], cfg, level, batch) for level, sites in enumerate(per_level) if level)
    return ElboTerms(loss / frames, reconstruction / frames, kl[1:] / frames, objective / frames)


def traces(model, guide, args: tuple) -> tuple:
    """The model's and the guide's traces as ``get_importance_trace`` makes them for the ELBOs (the guide's, the
    model replayed on it, subsample sites pruned, shapes checked under Pyro's validation), with the log-density of
    the observed sites only: the latent sites' are computed by the KL terms that read them. Only callables: a
    ``GuideMessenger`` guide is refused (the packaged programs, as the official code, are functions)."""
    if isinstance(poutine.unwrap(guide), poutine.messenger.Messenger):
        raise UserError("the guide is a Pyro GuideMessenger: write it as a function guide(video, nets, cfg, ...)")
    guide_trace = poutine.trace(guide).get_trace(*args)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args)
    if is_validation_enabled():
        check_model_guide_match(model_trace, guide_trace, float("inf"))
    guide_trace, model_trace = prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)
    if not is_validation_enabled():
        model_trace.compute_log_prob(site_filter=lambda name, site: site["is_observed"])
        return model_trace, guide_trace
    for trace in (model_trace, guide_trace):  # every log-density, for Pyro's checks of their shapes
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample":
                check_site_shape(site, float("inf"))
    return model_trace, guide_trace


def check_sites_match(model_trace, guide_trace, cfg) -> None:
    """``UserError`` in one line, naming the site and the program file, unless the model's latent sites and the
    guide's have the same names: the ELBO pairs them by name (a misnamed site would fail with a bare KeyError, or a
    site of the guide's alone be left out). Pyro's own check warns, and only under validation, which training turns
    off."""
    def latent(trace) -> set[str]:
        return {name for name, site in trace.nodes.items() if site["type"] == "sample" and not site["is_observed"]}

    sites = {"model": (latent(model_trace), cfg.model), "guide": (latent(guide_trace), cfg.guide)}
    auxiliary = sorted(name for name in sites["guide"][0] - sites["model"][0]
                       if guide_trace.nodes[name]["infer"].get("is_auxiliary"))
    if auxiliary:
        raise UserError(f"the guide ({cfg.guide or 'packaged'}) samples the auxiliary site {auxiliary[0]!r}: this "
                        "ELBO pairs each latent site of the model with the guide's of the same name and has no term "
                        "for a site of the guide's alone")
    for this, other in (("model", "guide"), ("guide", "model")):
        alone = sorted(sites[this][0] - sites[other][0], key=site_order)
        if alone:
            unpaired = sorted(sites[other][0] - sites[this][0], key=site_order)
            shown = f" (its sites without a partner: {', '.join(unpaired[:3])}{', ...' * (len(unpaired) > 3)})" \
                if unpaired else ""
            raise UserError(
                f"the {this} ({sites[this][1] or 'packaged'}) samples the latent site {alone[0]!r} and the {other} "
                f"({sites[other][1] or 'packaged'}) has no site of that name{shown}: the ELBO pairs each latent "
                "site of the model with the guide's of the same name, clock.site_name(level, frame) in the packaged "
                "programs")


def site_order(name: str) -> tuple:
    """Latent sites by level and frame, other names after them."""
    parsed = Clock.parse_site(name)
    return (0, *parsed, "") if parsed else (1, 0, 0, name)


def summed_kl(sites: list, elbo: str, zero: torch.Tensor, stop_q: bool = False, stop_p: bool = False
              ) -> torch.Tensor:
    """The sum of ``kl_term`` over the (guide site, model site) pairs ``sites``: in one computation over their
    stacked parameters where ``stacked_sites`` can stack them, else site by site."""
    stacked = stacked_sites(sites)
    if stacked is None:
        return sum((kl_term(q, p, elbo, stop_q, stop_p) for q, p in sites), zero)
    return kl_term(*stacked, elbo, stop_q, stop_p)


def stacked_sites(sites: list) -> tuple[dict, dict] | None:
    """The pairs ``sites`` as one pair of sites whose distributions hold all their parameters and values, stacked
    along a new first dimension, when every site is a Normal (or an ``Independent`` Normal, all alike) of one shape,
    unmasked, and the scales of each side are all one number or all 0-dim tensors (``--kl-warmup``'s scale on the
    device); None otherwise (then the sites are summed one by one)."""
    if len(sites) < 2:
        return None
    first = sites[0][0]["fn"]
    for pair in sites:
        for site in pair:
            fn = site["fn"]
            if not (same_normal_kind(fn, first) and fn.batch_shape == first.batch_shape
                    and fn.event_shape == first.event_shape and site["value"].shape == pair[0]["value"].shape
                    and site["mask"] is None):
                return None
    ndims = first.reinterpreted_batch_ndims if isinstance(first, Independent) else 0
    scales = [stacked_scale([pair[side]["scale"] for pair in sites], len(first.batch_shape)) for side in (0, 1)]
    if any(scale is None for scale in scales):
        return None
    value = torch.stack([q["value"] for q, _ in sites])
    return tuple({"fn": stacked_normal([pair[side]["fn"] for pair in sites], ndims), "value": value,
                  "scale": scales[side], "mask": None} for side in (0, 1))


def stacked_scale(scales: list, batch_dims: int):
    """The sites' ``scales`` for their stacked terms: the number they share, or the 0-dim tensors stacked into a
    shape that broadcasts over the batch dimensions; None for any other mix."""
    if all(isinstance(scale, (int, float)) for scale in scales):
        return float(scales[0]) if all(scale == scales[0] for scale in scales) else None
    if all(isinstance(scale, torch.Tensor) and scale.dim() == 0 for scale in scales):
        return torch.stack(scales).view(-1, *[1] * batch_dims)
    return None


NORMALS = (Normal, dist.Normal)  # torch's and Pyro's wrapper of it, not subclasses that may compute otherwise


def same_normal_kind(fn, first) -> bool:
    if isinstance(first, Independent):
        return (isinstance(fn, Independent) and type(fn.base_dist) in NORMALS
                and fn.reinterpreted_batch_ndims == first.reinterpreted_batch_ndims)
    return type(fn) in NORMALS and type(first) in NORMALS


def stacked_normal(fns: list, ndims: int):
    """One Normal (wrapped as ``fns`` are, ``ndims`` dimensions reinterpreted) of the stacked parameters of ``fns``."""
    normals = [fn.base_dist if ndims else fn for fn in fns]
    normal = Normal(torch.stack([n.loc for n in normals]), torch.stack([n.scale for n in normals]),
                    validate_args=False)  # each was validated where it was made
    return Independent(normal, ndims) if ndims else normal


def kl_term(q_site, p_site, elbo: str, stop_q: bool = False, stop_p: bool = False) -> torch.Tensor:
    """The KL estimate of one latent site, scaled and masked as Pyro's ELBOs do: analytic for ``meanfield`` where
    torch knows the pair, else log q(z) - log p(z) at the guide's sample. ``stop_q`` / ``stop_p`` stop the gradients
    into the parameters of q / p (and, with ``stop_q`` under the sample's estimate, into the sample)."""
    q, p = q_site["fn"], p_site["fn"]
    q, p = (detached(q) if stop_q else q), (detached(p) if stop_p else p)
    if elbo == "meanfield":
        try:
            return scale_and_mask(kl_divergence(q, p), q_site["scale"], q_site["mask"]).sum()
        except NotImplementedError:  # no analytic KL for this pair
            pass
    z = q_site["value"].detach() if stop_q else q_site["value"]
    return (scale_and_mask(q.log_prob(z), q_site["scale"], q_site["mask"]).sum()
            - scale_and_mask(p.log_prob(z), p_site["scale"], p_site["mask"]).sum())


def site_kl(q_site, p_site) -> torch.Tensor:
    """KL(q || p) of one latent site per batch element, unscaled: analytic where torch knows the pair of
    distributions, else the single-sample estimate log q(z) - log p(z) at the guide's sample z (as Pyro's
    TraceMeanField_ELBO falls back), so a variant's non-Normal prior rolls out and evaluates too."""
    q, p = q_site["fn"], p_site["fn"]
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        z = q_site["value"]
        return q.log_prob(z) - p.log_prob(z)


def shaped_kl(sites: list, kl: torch.Tensor, cfg, level: int, batch: int) -> torch.Tensor:
    """Level ``level``'s KL in the training objective (summed over the batch), shaped as the official loss does:
    balanced, then free nats, then weighted; the free nats and the posterior's floor count per sequence. ``kl``: the
    level's KL as the loss sums it (``summed_kl`` of ``sites``), reused where no balancing splits it."""
    if cfg.kl_balance is None:
        per_sequence = kl / batch
    else:
        prior_part = summed_kl(sites, cfg.elbo, kl.new_zeros(()), stop_q=True) / batch
        posterior_part = summed_kl(sites, cfg.elbo, kl.new_zeros(()), stop_p=True) / batch
        per_sequence = (1 - cfg.kl_balance) * prior_part + torch.clamp(cfg.kl_balance * posterior_part, min=1.0)
    if cfg.free_nats is not None:
        per_sequence = torch.clamp(per_sequence - cfg.free_nats, min=0.0)
    if cfg.kl_beta is not None:
        per_sequence = cfg.kl_beta[level - 1] * per_sequence
    return per_sequence * batch


def detached(fn):
    """The distribution ``fn`` with its parameters cut from the graph (``Independent`` wrappers kept)."""
    if isinstance(fn, Independent):
        return Independent(detached(fn.base_dist), fn.reinterpreted_batch_ndims)
    try:
        return type(fn)(**{name: getattr(fn, name).detach() for name in fn.arg_constraints})
    except (TypeError, AttributeError) as error:
        raise UserError(f"--kl-balance cannot stop gradients through a {type(fn).__name__} latent: "
                        f"it supports distributions built from their parameters, like Normal") from error
