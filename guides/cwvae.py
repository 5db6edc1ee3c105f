"""The CW-VAE inference model (paper eq. 4) as a Pyro program: q(s | x) = prod_l prod_{t in T_l} q_t^l.

    q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l),   e_t^l = sum of the embeddings of frames x_t .. x_{t + k^(l-1) - 1}

The guide walks the levels top-down like the model. It shares the model's deterministic path: h_t^l is the same
GRU step, taken on the posterior samples. The posterior itself has weights of its own: two dense ReLU layers on
[h_t^l, e_t^l], then the mean and stddev layers (``nets.Posterior``). The paper's text says only the output layer is
separate; this follows the official code (cells.py, ``_posterior``), which is what the paper's numbers were made with.
Site names match the model's (``s_{l}_{t}``), so ``poutine.block(hide_fn=...)`` can select a level.

``--obs-dropout P`` (off by default, and in the paper) hides each frame from level 1's posterior with probability P
while the networks train (zeroing its embedding), so that level 1 must predict those frames from its past and from
the levels above, as an open-loop prediction must (observational dropout, Freeman, Metz & Ha 2019); with
``--obs-dropout-span N`` it hides or shows N consecutive frames at a time. A guide with inputs hidden at random is
still a guide: the ELBO stays a lower bound for each mask drawn. Filtering a context for a rollout (the networks
in eval mode) sees every frame.

Copy this file, edit it, and train the copy with ``pyro-cwvae fit --guide PATH``.
"""
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine


def guide(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
    """``video`` is (B, T, C, 64, 64) in [0, 1]; the other arguments mirror the model's signature."""
    pyro.module("cwvae", nets)
    B, T = video.shape[:2]
    clock = cfg.clock
    embeddings = nets.encoder(video)  # e_t^l for every level, all frames encoded in one batched call
    initial = nets.initial_state(B)  # (0, 0)
    above = [initial] * clock.num_steps(cfg.levels + 1, T)  # the top level reads zeros from above
    with pyro.plate("batch", B):
        for level in range(cfg.levels, 0, -1):
            cell = nets.level(level)
            state, states = initial, []
            for step in pyro.markov(range(clock.num_steps(level, T))):
                h = cell.deterministic(state, above[clock.parent_step(step)])
                embedding = embeddings[level - 1][:, step]
                if level == 1 and cfg.obs_dropout and nets.training:
                    if step % cfg.obs_dropout_span == 0:  # a new draw for each span of frames
                        seen = torch.rand(B, 1, device=embedding.device) >= cfg.obs_dropout
                    embedding = embedding * seen
                loc, scale = cell.posterior(h, embedding)
                # q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l)
                with poutine.scale(scale=kl_scale):
                    z = pyro.sample(clock.site_name(level, clock.frame(level, step)),
                                    dist.Normal(loc, scale).to_event(1))
                state = (z, h)
                states.append(state)
            above = states  # what the level below conditions on
    level1 = torch.stack([torch.cat(state, -1) for state in states], 1)  # the loop ends at level 1
    return level1
