"""A hand-written PyTorch CW-VAE, without Pyro: the test oracle and the speed baseline of the Pyro programs.

It runs the same ``CWVAENets`` (same weights) through the same computation as ``models/cwvae.py`` and
``guides/cwvae.py`` under ``elbo_terms(..., cfg.replace(elbo="meanfield"))``:

- encode all frames in one call;
- walk the levels top-down and the steps of each level in time order exactly like the guide: the GRU state
  h_t^l from the previous posterior sample and the state above, then z_t^l ~ q(. | h_t^l, e_t^l);
- the prior p(z_t^l | h_t^l) from the same h, computed once (as the Pyro programs do when traced together inside
  ``nets.sharing_deterministic_path()``);
- decode the level-1 states in one call; Normal log-likelihood with std ``cfg.dec_std``;
- the KL of each level analytically with ``torch.distributions.kl_divergence``.

Random numbers are drawn in the guide's order (top level first, steps in time order, one
``loc + scale * standard_normal`` per site, which is what ``Normal.rsample`` does), so under the same torch
seed this module and the Pyro programs draw the same latents and agree to float precision.

    from benchmarks.reference import negative_elbo
    terms = negative_elbo(nets, video, cfg)     # loss, reconstruction, kl: nats per frame
    terms.loss.backward()
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Independent, Normal, kl_divergence

from pyro_cwvae.config import Config
from pyro_cwvae.nets import CWVAENets

DECODE_CHUNK = 256  # frames decoded per call in rollouts, as in pyro_cwvae.predict


@dataclass
class ReferenceTerms:
    loss: torch.Tensor  # negative ELBO, nats per frame
    reconstruction: torch.Tensor  # -log p(x | s^1), nats per frame
    kl: torch.Tensor  # (L,) KL of each level, nats per frame, level 1 first


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """A Normal over the last dimension, like Pyro's ``dist.Normal(loc, scale).to_event(1)``."""
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


def state(concatenated: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, h) from a state stored as [z, h]."""
    return tuple(concatenated.split([cfg.z_size, cfg.h_size], -1))


def filter_level(nets: CWVAENets, cfg: Config, level: int, embedding: torch.Tensor, above: torch.Tensor,
                 ) -> tuple[torch.Tensor, Independent, Independent]:
    """Run the posterior chain of one level over its steps, as the guide does.

    ``embedding`` (B, steps, 1024) is e_t^l, ``above`` (B, steps_above, state) the states of the level above.
    Returns the states [z, h] (B, steps, state), the posteriors q(z_t^l) and the priors p(z_t^l | h_t^l), each
    with batch shape (B, steps).
    """
    cell = nets.level(level)
    B, steps = embedding.shape[:2]
    z, h = embedding.new_zeros(B, cfg.z_size), embedding.new_zeros(B, cfg.h_size)
    hs, zs, locs, scales = [], [], [], []
    for step in range(steps):
        h = cell.transition.deterministic((z, h), state(above[:, cfg.clock.parent_step(step)], cfg))
        loc, scale = cell.posterior(h, embedding[:, step])
        z = diagonal_normal(loc, scale).rsample()  # one standard-normal draw per step, in time order
        hs.append(h), zs.append(z), locs.append(loc), scales.append(scale)
    h, z = torch.stack(hs, 1), torch.stack(zs, 1)
    posterior = diagonal_normal(torch.stack(locs, 1), torch.stack(scales, 1))
    prior = diagonal_normal(*cell.transition(h))  # the prior heads of all steps in one call
    return torch.cat([z, h], -1), posterior, prior


def negative_elbo(nets: CWVAENets, video: torch.Tensor, cfg: Config, kl_scale: float = 1.0) -> ReferenceTerms:
    """-ELBO of ``video`` (B, T, C, 64, 64) with analytic KLs, in nats per frame, differentiable.

    Equals ``elbo_terms(model, guide, video, nets, cfg.replace(elbo="meanfield"), kl_scale)`` under the same
    seed: the KL terms are multiplied by ``kl_scale`` as ``poutine.scale`` does in the programs.
    """
    B, T = video.shape[:2]
    embeddings = nets.encoder(video)  # e_t^l of every level, all frames in one call
    above = video.new_zeros(B, cfg.clock.num_steps(cfg.levels + 1, T), cfg.state_size)  # the top reads zeros
    kl = [video.new_zeros(())] * cfg.levels
    for level in range(cfg.levels, 0, -1):
        above, posterior, prior = filter_level(nets, cfg, level, embeddings[level - 1], above)
        kl[level - 1] = kl_scale * kl_divergence(posterior, prior).sum()
    frames = nets.decoder(above)  # the level-1 states of all frames in one call
    reconstruction = -Normal(frames, cfg.dec_std, validate_args=False).log_prob(video).sum()
    kl = torch.stack(kl)
    frames_total = B * T
    return ReferenceTerms((reconstruction + kl.sum()) / frames_total, reconstruction / frames_total, kl / frames_total)


@torch.no_grad()
def open_loop_states(nets: CWVAENets, context: torch.Tensor, num_frames: int, cfg: Config) -> torch.Tensor:
    """Level-1 states (B, num_frames, state) given only the ``context`` frames (B, C_T, C, 64, 64).

    Filter the context with the posterior (all levels, top-down), then continue each level from its last
    filtered state with samples of the prior, top-down, each level conditioned on the continued level above.
    Draws the noise in the order of ``pyro_cwvae.predict.open_loop_states`` (guide first, then the model's prior
    sites), so under the same seed both return the same states.
    """
    B, context_frames = context.shape[:2]
    clock = cfg.clock
    embeddings = nets.encoder(context)
    above = context.new_zeros(B, clock.num_steps(cfg.levels + 1, context_frames), cfg.state_size)
    filtered = {}
    for level in range(cfg.levels, 0, -1):
        above, _, _ = filter_level(nets, cfg, level, embeddings[level - 1], above)
        filtered[level] = above

    above = context.new_zeros(B, clock.num_steps(cfg.levels + 1, num_frames), cfg.state_size)
    for level in range(cfg.levels, 0, -1):
        transition = nets.level(level).transition
        states = list(filtered[level].unbind(1))
        z, h = state(states[-1], cfg)
        for step in range(len(states), clock.num_steps(level, num_frames)):
            h = transition.deterministic((z, h), state(above[:, clock.parent_step(step)], cfg))
            z = diagonal_normal(*transition(h)).rsample()  # as Pyro draws it: loc + scale * standard normal
            states.append(torch.cat([z, h], -1))
        above = torch.stack(states, 1)
    return above


@torch.no_grad()
def decode(nets: CWVAENets, states: torch.Tensor, chunk: int = DECODE_CHUNK) -> np.ndarray:
    """uint8 frames (B, T, C, 64, 64) of the decoder's means, ``chunk`` frames per decoder call."""
    B, T = states.shape[:2]
    frames = np.empty((B, T, nets.decoder.deconvs[-1].out_channels, 64, 64), dtype=np.uint8)
    step = max(1, chunk // B)
    for start in range(0, T, step):
        mean = nets.decoder(states[:, start:start + step])
        frames[:, start:start + step] = mean.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()
    return frames


def rollout(nets: CWVAENets, context: torch.Tensor, num_frames: int, cfg: Config) -> np.ndarray:
    """Open-loop prediction: uint8 frames (B, num_frames, C, 64, 64), the context's reconstructions first."""
    return decode(nets, open_loop_states(nets, context, num_frames, cfg))
