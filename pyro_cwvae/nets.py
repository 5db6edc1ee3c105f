"""The networks of the CW-VAE (paper eq. 4). They return distribution parameters and never sample.

Sizes and activations follow the reference implementation: a 4-layer conv encoder to 1024 features per frame,
a dense embedding stack per level above the first whose frame embeddings are summed over the level's k**(l-1)
frames, one RSSM cell per level (a GRU deterministic path shared by the prior and posterior heads), and a
transposed-conv decoder back to 64x64.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config

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
    """Per-frame embedding of a level l >= 2: dense ReLU layers and a linear output back to 1024 features.

    As in the reference, level l's stack reads level (l-1)'s per-frame embedding, so the stacks form a chain.
    """

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
        self.stacks = nn.ModuleList(
            LevelEmbedding(cfg.enc_dense_size, cfg.enc_dense_layers) for _ in range(cfg.levels - 1)
        )

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


STOCHASTIC_LAYERS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
                     nn.RReLU)  # layers that draw random numbers in training mode


class StepCache:
    """The GRU steps taken inside ``CWVAENets.sharing_deterministic_path()``, so that a step taken again on the
    same inputs returns the first result and its autograd graph: the model, replayed on the guide's samples,
    then reuses the guide's h_t^l (one GRU call per latent site), and the ELBO and its gradients are unchanged.

    A step is reused only if all of these are unchanged (``step_key``): the transition, the identity and version
    (``tensor._version``, bumped by every in-place edit) of each input tensor, the grad mode (an h computed under
    ``torch.no_grad()`` has no graph to hand on), the autocast state, and the versions of the transition's
    parameters (an optimizer step inside a block). Entries keep their inputs alive, so no id is reused while
    they exist. A transition holding a stochastic layer in training mode never shares (``shares_steps``), and
    inference tensors (no version counter) are never shared. Changes through ``.data`` and fused optimizers
    (``fused=True``) bump no version: make them outside a block.

    The cache is emptied at the end of every block, nested ones too, and a copy (deepcopy, pickle) of the
    networks starts empty: nothing outlives one ELBO evaluation or rollout. ``hits`` and ``misses`` count GRU
    steps since the networks were built: under ``elbo_terms`` one miss (guide) and one hit (model) per site.
    """

    def __init__(self):
        self.entries: Optional[dict] = None  # None outside a block
        self.depth = 0  # blocks entered and not left
        self.hits = 0
        self.misses = 0

    def __reduce__(self):
        return StepCache, ()  # copies start empty, outside any block

    @property
    def active(self) -> bool:
        return self.entries is not None

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses}

    @contextmanager
    def block(self) -> Iterator[None]:
        """Reuse steps within this block; forget them all when it ends."""
        self.depth += 1
        if self.entries is None:
            self.entries = {}
        try:
            yield
        finally:
            self.depth -= 1
            self.entries.clear()
            if not self.depth:
                self.entries = None

    def step(self, key: tuple, keep: tuple, gru_step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The h stored under ``key`` (a hit), or ``gru_step()``'s, stored with ``keep`` alive (a miss)."""
        entry = self.entries.get(key)
        if entry is not None:
            self.hits += 1
            return entry[1]
        self.misses += 1
        h = gru_step()
        self.entries[key] = (keep, h)
        return h

    def initial(self, key: tuple, make: Callable[[], State]) -> State:
        """The state stored under ``key`` unless it was edited in place since, else ``make()``'s, stored."""
        entry = self.entries.get(key)
        if entry is not None and versions(entry[0]) == entry[1]:
            return entry[0]
        state = make()
        self.entries[key] = (state, versions(state))
        return state


def versions(tensors) -> tuple[int, ...]:
    return tuple(tensor._version for tensor in tensors)


def step_key(transition: Transition, inputs: tuple[torch.Tensor, ...]) -> tuple:
    """What a GRU step's result depends on besides the weights' values (see ``StepCache``)."""
    device = inputs[-1].device.type
    autocast = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    return (id(transition), torch.is_grad_enabled(), autocast, versions(transition.weights),
            *map(id, inputs), *versions(inputs))


class Transition(nn.Module):
    """The deterministic path and prior of one level: h_t = GRU(h_{t-1}, [z_{t-1}, s_t^{l+1}]),
    parameterizes p(s_t^l | s_{t-1}^l, s_t^{l+1}) = N(z_t; mean(h_t), std(h_t))."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.inp = nn.Linear(cfg.z_size + cfg.state_size, cfg.embed_size)
        self.gru = nn.GRUCell(cfg.embed_size, cfg.h_size)
        self.hidden = nn.Linear(cfg.h_size, cfg.embed_size)
        self.head = GaussianHead(cfg.embed_size, cfg.z_size, cfg.min_std)
        self.step_cache: Optional[StepCache] = None  # the networks' cache and what its keys read, set by join
        self.weights: tuple[nn.Parameter, ...] = ()
        self.stochastic_layers: tuple[nn.Module, ...] = ()

    def deterministic(self, previous: State, above: State) -> torch.Tensor:
        """h_t^l from the previous state s_{t-1}^l and the state above s_t^{l+1}.

        Inside ``CWVAENets.sharing_deterministic_path()`` a step already taken on the same inputs is reused
        (see ``StepCache``), so the model replayed on the guide's samples does not recompute the guide's steps.
        """
        cache = self.step_cache
        if cache is None or not cache.active or not self.shares_steps():
            return self.gru_step(previous, above)
        inputs = (*previous, *above)
        try:
            key = step_key(self, inputs)
        except RuntimeError:  # inference tensors have no version counter: such a step is never shared
            return self.gru_step(previous, above)
        return cache.step(key, (self, inputs), lambda: self.gru_step(previous, above))

    def join(self, cache: StepCache) -> None:
        """Share steps through ``cache``. The parameters and stochastic layers are collected here, once a block:
        walking the modules at every step would cost more than a small GRU step."""
        self.step_cache = cache
        self.weights = tuple(self.parameters())
        self.stochastic_layers = tuple(module for module in self.modules() if isinstance(module, STOCHASTIC_LAYERS))

    def shares_steps(self) -> bool:
        """Whether two steps on the same inputs give the same h: not while a stochastic layer (dropout, RReLU)
        is in training mode. A variant that draws random numbers in ``gru_step`` otherwise must return False."""
        return not any(layer.training for layer in self.stochastic_layers)

    def gru_step(self, previous: State, above: State) -> torch.Tensor:
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
    """Diagonal Gaussian parameters: loc = Dense(hidden), scale = softplus(Dense(hidden + 0.54)) + min_std.

    The official code (cells.py, ``_prior`` and ``_posterior``) adds 0.54 to the *input* of the stddev layer,
    not to its output: it shifts the layer's input, so it changes the initial scales and every gradient of that
    layer's kernel (it is not a reparameterisation of the bias).
    """

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
        self.deconvs = nn.ModuleList(
            nn.ConvTranspose2d(a, b, kernel_size=k, stride=2) for a, b, k in zip(widths, widths[1:], kernels)
        )

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
    whose steps the model and guide share (``StepCache``)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.transition = Transition(cfg)
        self.posterior = Posterior(cfg)

    def deterministic(self, previous: State, above: State) -> torch.Tensor:
        """h_t^l from the previous state s_{t-1}^l and the state above s_t^{l+1} (``Transition.deterministic``)."""
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
        self.step_cache = StepCache()  # GRU steps shared by the guide and the model; see StepCache
        self.apply(initialize_like_reference)

    def level(self, level: int) -> Level:
        """The cell of level ``level`` (1-based, as in the paper)."""
        return self.levels[level - 1]

    def initial_state(self, batch_size: int) -> State:
        """(0, 0): the state before each level's first step, and what the top level reads from above.

        Inside ``sharing_deterministic_path()`` the same tensors each time, so that first steps are shared too.
        """
        weight = self.decoder.dense.weight

        def zeros() -> State:
            return tuple(weight.new_zeros(batch_size, size) for size in self.state_sizes)

        if not self.step_cache.active or torch.is_inference_mode_enabled():  # inference tensors: no version
            return zeros()
        return self.step_cache.initial(("initial", batch_size, weight.device, weight.dtype), zeros)

    @contextmanager
    def sharing_deterministic_path(self) -> Iterator[None]:
        """Within this block a GRU step taken again on the same inputs returns its first result (``StepCache``).

        Traced together (the guide first, then the model replayed on the guide's samples), the two programs then
        compute each h_t^l once, as a hand-written CW-VAE would; the ELBO and its gradients are unchanged.
        """
        for level in self.levels:  # at every block: also a transition a variant swapped in after construction
            level.transition.join(self.step_cache)
        with self.step_cache.block():
            yield
