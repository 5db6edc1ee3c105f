"""The ELBO of eq. 5, split into the terms a user wants to watch: reconstruction and the KL of each level.

The estimators are Pyro's own: the model and guide are traced exactly as ``pyro.infer.Trace_ELBO`` and
``TraceMeanField_ELBO`` trace them (``get_importance_trace``), and the terms are summed from those traces:

- ``trace``: KL_l = sum over level-l sites of log q(z) - log p(z) at the guide's sample (Monte Carlo);
- ``meanfield``: KL_l = sum over level-l sites of KL(q || p), analytic via ``torch.distributions`` where it knows
  the pair of distributions, else log q(z) - log p(z) as under ``trace`` (as ``TraceMeanField_ELBO`` falls back).

Their sum is the loss of the corresponding Pyro ELBO (tests check it against Pyro's), returned as tensors so
that a training step never waits for the device. All terms are divided by batch x frames: nats per frame.

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
from pyro.infer.enum import get_importance_trace
from pyro.distributions.util import scale_and_mask
from torch.distributions import Independent, kl_divergence

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
        model_trace, guide_trace = get_importance_trace("flat", float("inf"), model, guide, args, {})
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
    kl = torch.stack([sum((kl_term(q, p, cfg.elbo) for q, p in sites), video.new_zeros(())) for sites in per_level])
    loss = reconstruction + kl.sum()
    shaping = cfg.kl_balance is not None or cfg.free_nats is not None or cfg.kl_beta is not None
    objective = loss if not shaping else reconstruction + kl[0] + sum(
        shaped_kl(sites, cfg, level, batch, video.new_zeros(())) for level, sites in enumerate(per_level) if level)
    return ElboTerms(loss / frames, reconstruction / frames, kl[1:] / frames, objective / frames)


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
    if not (stop_q or stop_p):
        return q_site["log_prob_sum"] - p_site["log_prob_sum"]
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


def shaped_kl(sites: list, cfg, level: int, batch: int, zero: torch.Tensor) -> torch.Tensor:
    """Level ``level``'s KL in the training objective (summed over the batch), shaped as the official loss does:
    balanced, then free nats, then weighted; the free nats and the posterior's floor count per sequence."""
    if cfg.kl_balance is None:
        per_sequence = sum((kl_term(q, p, cfg.elbo) for q, p in sites), zero) / batch
    else:
        prior_part = sum((kl_term(q, p, cfg.elbo, stop_q=True) for q, p in sites), zero) / batch
        posterior_part = sum((kl_term(q, p, cfg.elbo, stop_p=True) for q, p in sites), zero) / batch
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
