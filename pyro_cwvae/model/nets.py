"""The networks of the CW-VAE (paper eq. 4). They return distribution parameters and never sample.

Sizes and activations follow the reference implementation: a 4-layer conv encoder to 1024 features per frame,
a dense embedding stack per level above the first whose frame embeddings are summed over the level's k**(l-1)
frames, one RSSM cell per level (a GRU deterministic path shared by the prior and posterior heads), and a
transposed-conv decoder back to 64x64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pyro_cwvae.model.config import Config

FEATURES = 1024  # encoder output per frame: 256 channels x 2 x 2
EVAL_CHUNK = 512  # frames per conv call when no gradient is needed (rollouts of long videos)

State = tuple[torch.Tensor, torch.Tensor]  # s_t^l = (z_t^l, h_t^l)


class Encoder(nn.Module):
    """Frame features e(x_t): four 4x4 stride-2 convolutions (32/64/128/256 filters, leaky ReLU 0.2)."""

    def __init__(self, channels: int):
        super().__init__()
        widths = [channels, 32, 64, 128, 256]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=4, stride=2) for a, b in zip(widths, widths[1:]))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, C, 64, 64) -> (N, 1024)."""
        hidden = frames
        for conv in self.convs:
            hidden = F.leaky_relu(conv(hidden), 0.2)
        return hidden.flatten(1)


class LevelEmbedding(nn.Module):
    """Per-frame embedding of a level l >= 2: dense ReLU layers and a linear output back to 1024 features. As in the
    reference, level l's stack reads level (l-1)'s per-frame embedding, so the stacks form a chain."""

    def __init__(self, hidden: int, layers: int):
        super().__init__()
        widths = [FEATURES] + [hidden] * (layers - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], FEATURES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            features = F.relu(layer(features))
        return self.out(features)


class HierarchicalEncoder(nn.Module):
    """e_t^l = sum of the level-l embeddings of frames x_{t : t + k**(l-1)} (eq. 4), for every level."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.clock = cfg.clock
        self.conv = Encoder(cfg.channels)
        # levels 2 .. L: ``stack(level)`` counts from 1 as the paper does
        self.stacks = nn.ModuleList(LevelEmbedding(cfg.enc_dense_size, cfg.enc_dense_layers)
                                    for _ in range(cfg.levels - 1))

    def stack(self, level: int) -> LevelEmbedding:
        """The embedding stack of level ``level`` >= 2."""
        return self.stacks[level - 2]

    def forward(self, video: torch.Tensor) -> list[torch.Tensor]:
        """(B, T, C, 64, 64) -> one (B, |T_l|, 1024) tensor per level, level 1 first."""
        B, T = video.shape[:2]
        frames = video.flatten(0, 1)
        if torch.is_grad_enabled():
            features = self.conv(frames)  # all frames in one batched call
        else:  # evaluation of long videos: bound the memory of the conv activations
            features = torch.cat([self.conv(chunk) for chunk in frames.split(EVAL_CHUNK)])
        features = features.view(B, T, FEATURES)
        embeddings = [features]
        for level in range(2, self.clock.levels + 1):
            features = self.stack(level)(features)
            period = self.clock.period(level)
            steps = self.clock.num_steps(level, T)
            padded = F.pad(features, (0, 0, 0, steps * period - T))  # zeros: the last step may see fewer frames
            embeddings.append(padded.view(B, steps, period, FEATURES).sum(2))
        return embeddings


class Transition(nn.Module):
    """The deterministic path and prior of one level: h_t = GRU(h_{t-1}, [z_{t-1}, s_t^{l+1}]),
    parameterizes p(s_t^l | s_{t-1}^l, s_t^{l+1}) = N(z_t; mean(h_t), std(h_t))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.inp = nn.Linear(cfg.z_size + cfg.state_size, cfg.embed_size)
        self.gru = nn.GRUCell(cfg.embed_size, cfg.h_size)
        self.hidden = nn.Linear(cfg.h_size, cfg.embed_size)
        self.head = GaussianHead(cfg.embed_size, cfg.z_size, cfg.min_std)

    def deterministic(self, previous: State, above: State) -> torch.Tensor:
        """h_t^l from the previous state s_{t-1}^l and the state above s_t^{l+1}."""
        z_prev, h_prev = previous
        return self.gru(F.relu(self.inp(torch.cat([z_prev, *above], -1))), h_prev).float()  # float32 under autocast

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior head: loc and scale of p(z_t^l | h_t^l) (``Level.prior``)."""
        return self.head(F.relu(self.hidden(h)))


class Posterior(nn.Module):
    """Parameterizes q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l) from h_t^l (shared with the prior) and e_t^l."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.hidden1 = nn.Linear(cfg.h_size + FEATURES, cfg.embed_size)
        self.hidden2 = nn.Linear(cfg.embed_size, cfg.embed_size)
        self.head = GaussianHead(cfg.embed_size, cfg.z_size, cfg.min_std)

    def forward(self, h: torch.Tensor, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = F.relu(self.hidden1(torch.cat([h, embedding], -1)))
        return self.head(F.relu(self.hidden2(hidden)))


class GaussianHead(nn.Module):
    """Diagonal Gaussian parameters: loc = Dense(hidden), scale = softplus(Dense(hidden + 0.54)) + min_std. The official
    code (cells.py, ``_prior`` and ``_posterior``) adds 0.54 to the *input* of the stddev layer, not to its output: it
    shifts the layer's input, so it changes the initial scales and every gradient of that layer's kernel (it is not a
    reparameterisation of the bias)."""

    STD_INPUT_OFFSET = 0.54

    def __init__(self, inputs: int, outputs: int, min_std: float):
        super().__init__()
        self.loc = nn.Linear(inputs, outputs)
        self.scale = nn.Linear(inputs, outputs)
        self.min_std = min_std

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # float32 under autocast too: log-densities and KLs need the precision
        scale = F.softplus(self.scale(hidden + self.STD_INPUT_OFFSET).float()) + self.min_std
        return self.loc(hidden).float(), scale


class Decoder(nn.Module):
    """Parameterizes p(x_t | s_t^1): the mean frame from the state [z_t^1, h_t^1] (tanh output, as in the reference)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.dense = nn.Linear(cfg.state_size, FEATURES)
        kernels, widths = [5, 5, 6, 6], [FEATURES, 128, 64, 32, cfg.channels]
        self.deconvs = nn.ModuleList(nn.ConvTranspose2d(a, b, kernel_size=k, stride=2)
                                     for a, b, k in zip(widths, widths[1:], kernels))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(..., state) -> (..., C, 64, 64)."""
        hidden = self.dense(states.flatten(0, -2))  # (N, 1024)
        # A transposed conv of a 1x1 input is a matrix product: 3-4x faster than the conv call on CPU.
        first = self.deconvs[0]
        hidden = (hidden @ first.weight.flatten(1)).view(-1, *first.weight.shape[1:]) + first.bias[:, None, None]
        hidden = F.leaky_relu(hidden, 0.2)  # 5x5
        for deconv in self.deconvs[1:-1]:
            hidden = F.leaky_relu(deconv(hidden), 0.2)  # 13x13, 30x30
        frames = torch.tanh(self.deconvs[-1](hidden).float())  # 64x64, float32 under autocast too
        return frames.view(*states.shape[:-1], *frames.shape[1:])


class Level(nn.Module):
    """The RSSM cell of one level, as the programs use it: ``deterministic`` (h_t^l), ``prior`` (p(z_t^l | h_t^l))
    and ``posterior`` (q(z_t^l | h_t^l, e_t^l)). The GRU and the prior head live in ``transition``, the unit
    whose steps the model and guide share (``step_sharing.py``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.transition = Transition(cfg)
        self.posterior = Posterior(cfg)

    def deterministic(self, previous: State, above: State) -> torch.Tensor:
        return self.transition.deterministic(previous, above)

    def prior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loc and scale of p(z_t^l | h_t^l)."""
        return self.transition(h)


def initialize_like_reference(module: nn.Module) -> None:
    """The reference's initial weights (Keras' defaults), not PyTorch's: Glorot-uniform kernels, orthogonal GRU
    recurrent kernels, zero biases."""
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GRUCell):
        nn.init.xavier_uniform_(module.weight_ih)
        nn.init.orthogonal_(module.weight_hh)
        nn.init.zeros_(module.bias_ih)
        nn.init.zeros_(module.bias_hh)


class CWVAENets(nn.Module):
    """All networks of a CW-VAE, registered with ``pyro.module`` by the model and guide programs."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.state_sizes = (cfg.z_size, cfg.h_size)
        self.encoder = HierarchicalEncoder(cfg)
        self.levels = nn.ModuleList(Level(cfg) for _ in range(cfg.levels))
        self.decoder = Decoder(cfg)
        self.apply(initialize_like_reference)

    def level(self, level: int) -> Level:
        """The cell of level ``level`` (1-based, as in the paper)."""
        return self.levels[level - 1]

    def initial_state(self, batch_size: int) -> State:
        """(0, 0): the state before each level's first step, and what the top level reads from above."""
        weight = self.decoder.dense.weight
        return tuple(weight.new_zeros(batch_size, size) for size in self.state_sizes)


def observational_dropout(embeddings: list[torch.Tensor], cfg: Config, training: bool) -> list[torch.Tensor]:
    """``embeddings`` with level 1's frames hidden (zeroed) with probability ``cfg.obs_dropout`` while training,
    ``cfg.obs_dropout_span`` consecutive frames at a time, so that level 1 must predict those frames from its past
    and the levels above, as an open-loop prediction must (observational dropout, Freeman, Metz & Ha 2019). A guide
    with inputs hidden at random is still a guide: the ELBO stays a lower bound for each mask. Off by default (and
    in the paper), and off in eval mode: filtering a context sees every frame."""
    if not (cfg.obs_dropout and training):
        return embeddings
    level1 = embeddings[0]
    (B, T), span = level1.shape[:2], cfg.obs_dropout_span
    seen = torch.rand(B, -(-T // span), 1, device=level1.device) >= cfg.obs_dropout  # one draw per span
    return [level1 * seen.repeat_interleave(span, 1)[:, :T], *embeddings[1:]]
