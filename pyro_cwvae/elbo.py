"""The ELBO of eq. 5, split into the terms a user wants to watch: reconstruction and the KL of each level.

The estimators are Pyro's own: the model and guide are traced exactly as ``pyro.infer.Trace_ELBO`` and
``TraceMeanField_ELBO`` trace them (``get_importance_trace``), and the terms are summed from those traces:

- ``trace``: KL_l = sum over level-l sites of log q(z) - log p(z) at the guide's sample (Monte Carlo);
- ``meanfield``: KL_l = sum over level-l sites of KL(q || p), analytic via ``torch.distributions``.

Their sum is the loss of the corresponding Pyro ELBO (tests check it against Pyro's), returned as tensors so
that a training step never waits for the device. All terms are divided by batch x frames: nats per frame.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from pyro.infer.enum import get_importance_trace
from pyro.distributions.util import scale_and_mask
from torch.distributions import kl_divergence

LATENT = re.compile(r"s_(\d+)_(\d+)$")


@dataclass
class ElboTerms:
    loss: torch.Tensor  # negative ELBO, nats per frame
    reconstruction: torch.Tensor  # -log p(x | s^1), nats per frame
    kl: torch.Tensor  # (L,) KL of each level, nats per frame

    def pack(self) -> torch.Tensor:
        """[loss, reconstruction, kl_1, ..., kl_L] as one tensor (a module's output, one device transfer)."""
        return torch.cat([self.loss[None], self.reconstruction[None], self.kl])

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> "ElboTerms":
        return cls(packed[0], packed[1], packed[2:])


def level_of(site_name: str) -> int | None:
    """1-based level of a latent site ``s_{l}_{t}``; None for sites of other names."""
    match = LATENT.match(site_name)
    return int(match.group(1)) if match else None


def elbo_terms(model, guide, video, nets, cfg, kl_scale: float = 1.0) -> ElboTerms:
    """Negative ELBO of ``video`` (B, T, C, 64, 64) and its terms, differentiable."""
    args = (video, nets, cfg, kl_scale)
    with nets.sharing_deterministic_path():  # the model reuses the guide's GRU steps
        model_trace, guide_trace = get_importance_trace("flat", float("inf"), model, guide, args, {})
    frames = video.shape[0] * video.shape[1]
    reconstruction = video.new_zeros(())
    per_level = [[] for _ in range(cfg.levels + 1)]  # index 0: latent sites of a variant that fit no level
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site["is_observed"]:
            reconstruction = reconstruction - site["log_prob_sum"]
            continue
        guide_site = guide_trace.nodes[name]
        if cfg.elbo == "meanfield":
            term = scale_and_mask(kl_divergence(guide_site["fn"], site["fn"]), guide_site["scale"], guide_site["mask"]).sum()
        else:
            term = guide_site["log_prob_sum"] - site["log_prob_sum"]
        level = level_of(name)
        per_level[level if level is not None and level <= cfg.levels else 0].append(term)
    kl = torch.stack([sum(terms, video.new_zeros(())) for terms in per_level])
    loss = reconstruction + kl.sum()
    return ElboTerms(loss / frames, reconstruction / frames, kl[1:] / frames)
