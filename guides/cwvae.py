"""The CW-VAE inference model (paper eq. 4) as a Pyro program: q(s | x) = prod_l prod_{t in T_l} q_t^l.

    q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l),   e_t^l = sum of the embeddings of frames x_t .. x_{t + k^(l-1) - 1}

The guide walks the levels top-down like the model. It shares the model's deterministic path: h_t^l is the same
GRU step, taken on the posterior samples. The posterior itself has weights of its own: two dense ReLU layers on
[h_t^l, e_t^l], then the mean and stddev layers (``nets.Posterior``). The paper's text says only the output layer is
separate; this follows the official code (cells.py, ``_posterior``), which is what the paper's numbers were made with.
Site names match the model's (``s_{l}_{t}``), so ``poutine.block(hide_fn=...)`` can select a level.

``--obs-dropout P`` hides frames from level 1's posterior while training (``nets.observational_dropout``).

Copy this file, edit it, and train the copy with ``pyro-cwvae fit --guide PATH``.
"""
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_cwvae.model.nets import observational_dropout


def guide(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
    """``video`` is (B, T, C, 64, 64) in [0, 1]; the other arguments mirror the model's signature."""
    pyro.module("cwvae", nets)
    B, T = video.shape[:2]
    clock = cfg.clock
    embeddings = observational_dropout(nets.encoder(video), cfg, nets.training)  # e_t^l of every level, all frames
    initial = nets.initial_state(B)  # (0, 0)
    above = [initial] * clock.num_steps(cfg.levels + 1, T)  # the top level reads zeros from above
    with pyro.plate("batch", B):
        for level in range(cfg.levels, 0, -1):
            cell = nets.level(level)
            state, states = initial, []
            for step in pyro.markov(range(clock.num_steps(level, T))):
                h = cell.deterministic(state, above[clock.parent_step(step)])
                loc, scale = cell.posterior(h, embeddings[level - 1][:, step])
                # q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l)
                with poutine.scale(scale=kl_scale):
                    z = pyro.sample(clock.site_name(level, clock.frame(level, step)),
                                    dist.Normal(loc, scale).to_event(1))
                state = (z, h)
                states.append(state)
            above = states  # what the level below conditions on
    level1 = torch.stack([torch.cat(state, -1) for state in states], 1)  # the loop ends at level 1
    return level1
