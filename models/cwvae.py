r"""The CW-VAE generative model (paper eq. 3) as a Pyro program.

    p(x_{1:T}, s_{1:T}^{1:L}) = prod_t p(x_t | s_t^1)  prod_l prod_{t in T_l} p(s_t^l | s_{t-1}^l, s_t^{l+1})

    level 2:   s_0^2 ------------------> s_2^2 ------------------> ...      (ticks every k = 2 frames)
                 |       \                  |       \
    level 1:   s_0^1 --> s_1^1 --------> s_2^1 --> s_3^1 --------> ...
                 |         |                |         |
    frames:     x_0       x_1              x_2       x_3

Each state s_t^l = (z_t^l, h_t^l): z is the latent sampled at site ``s_{l}_{t}``; h is the GRU state, a
deterministic function of the previous state and the state above (so it is a plain tensor, not a site). The
top level reads zeros from "above". All frames are decoded in one batched call and observed in one site ``x``:
they are conditionally independent given level 1.

Copy this file, edit it, and train the copy with ``pyro-cwvae fit --model PATH``.
"""
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine


def model(video, nets, cfg, kl_scale=1.0, num_frames=None, batch_size=None):
    """``video`` is (B, T, C, 64, 64) in [0, 1], or None to sample ``num_frames`` frames' states for
    ``batch_size`` sequences without observing (and without decoding) frames.

    Returns the level-1 states [z_t^1, h_t^1] of all frames, (B, T, z + h): the input of the decoder.
    """
    pyro.module("cwvae", nets)
    B, T = video.shape[:2] if video is not None else (batch_size, num_frames)
    clock = cfg.clock
    initial = nets.initial_state(B)  # (0, 0)
    above = [initial] * clock.num_steps(cfg.levels + 1, T)  # the top level reads zeros from above
    with pyro.plate("batch", B):
        for level in range(cfg.levels, 0, -1):
            cell = nets.level(level)
            state, states = initial, []
            for step in pyro.markov(range(clock.num_steps(level, T))):
                h = cell.deterministic(state, above[clock.parent_step(step)])
                loc, scale = cell.prior(h)
                # p(s_t^l | s_{t-1}^l, s_t^{l+1})
                with poutine.scale(scale=kl_scale):
                    z = pyro.sample(clock.site_name(level, clock.frame(level, step)),
                                    dist.Normal(loc, scale).to_event(1))
                state = (z, h)
                states.append(state)
            above = states  # what the level below conditions on
        level1 = torch.stack([torch.cat(state, -1) for state in states], 1)  # the loop ends at level 1
        if video is not None:
            # prod_t p(x_t | s_t^1), all frames in one site
            frames = nets.decoder(level1)
            pyro.sample("x", dist.Normal(frames, cfg.dec_std).to_event(4), obs=video)
    return level1
