"""An independent PyTorch transcription of the official CW-VAE computation: the test oracle and the speed baseline.

Written from the formulas of the official TensorFlow code of the paper (``cnns.py``, ``cells.py``, ``cwvae.py``,
``train.py``), not from this project: it shares no code with ``pyro_cwvae`` beyond reading the weights of a
``CWVAENets`` by name (``nets.state_dict()``, each checked against the shape the official layer has, so a
renamed or reshaped weight fails loudly) and the fields of a ``Config``. Every layer is a plain tensor function:

- encoder: four 4x4 stride-2 valid convolutions (leaky ReLU 0.2); level l >= 2 continues the dense stack of
  level l-1 (ReLU hidden layers, linear output) and sums the embeddings of each block of k**(l-1) frames, the
  last block zero-padded;
- cells (``_prior``, ``_posterior``): h = GRU(h_prev, relu(Dense([z_prev, z_above, h_above]))) with the Keras
  GRU equations (reset_after=True); prior from relu(Dense(h)), posterior from two relu Dense layers on
  [h, embedding]; mean = Dense(hl), stddev = softplus(Dense(hl + 0.54)) + min_std;
- levels run top-down, the top one reading zeros; step i of level l reads the state [z, h] of step i // k of
  level l+1 (eq. 1);
- decoder: Dense(1024), transposed convolutions 5/5/6/6 (leaky ReLU 0.2), tanh output;
- loss as ``compute_losses``: (Gaussian NLL + the KL of every level) / (batch x frames), both in closed form;
- Keras' Adam ("epsilon hat"), for checking the project's optimizer.

Random numbers are drawn in the Pyro guide's order (top level first, steps in time order, one
``loc + scale * eps`` per step with eps from ``torch.empty(...).normal_()``, as ``Normal.rsample`` draws it), so
under the same torch seed ``negative_elbo`` draws the latents of ``elbo_terms(..., cfg.replace(elbo="meanfield"))``.

    from benchmarks.reference import negative_elbo
    terms = negative_elbo(nets, video, cfg)     # loss, reconstruction, kl: nats per frame
    terms.loss.backward()
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from pyro_cwvae.model.config import Config

DECODE_CHUNK = 256  # frames decoded per call in rollouts
STD_INPUT_OFFSET = 0.54  # cells.py adds it to the input of the stddev Dense layer
LEAK = 0.2  # tf.nn.leaky_relu's default slope
ENCODER_FILTERS = (32, 64, 128, 256)  # 4x4 kernels, stride 2
DECODER_LAYERS = ((128, 5), (64, 5), (32, 6))  # (filters, kernel) before the output layer's 6x6 kernel
DECODER_DENSE = 1024


@dataclass
class ReferenceTerms:
    loss: torch.Tensor  # negative ELBO, nats per frame
    reconstruction: torch.Tensor  # -log p(x | s^1), nats per frame
    kl: torch.Tensor  # (L,) KL of each level, nats per frame, level 1 first


class Weights:
    """The parameters of a ``CWVAENets``, looked up by name and checked against the official layer's shape."""

    def __init__(self, nets: torch.nn.Module):
        self.named = nets.state_dict(keep_vars=True)  # the Parameters themselves: gradients reach the networks

    def __call__(self, name: str, *shape: int) -> torch.Tensor:
        if name not in self.named:
            raise KeyError(f"the oracle reads the weight {name!r}, which the networks do not have")
        tensor = self.named[name]
        if tuple(tensor.shape) != shape:
            raise ValueError(f"weight {name!r} has shape {tuple(tensor.shape)}, the oracle expects {shape}")
        return tensor


# ---------------------------------------------------------------------------------------------------- the clock


def period(cfg: Config, level: int) -> int:
    """Frames per step of ``level``: k**(l-1)."""
    return cfg.factor ** (level - 1)


def num_steps(cfg: Config, level: int, frames: int) -> int:
    """Steps of ``level`` over ``frames`` frames: ceil(frames / k**(l-1))."""
    return -(-frames // period(cfg, level))


# ------------------------------------------------------------------------------------------------------- layers


def dense(w: Weights, name: str, x: torch.Tensor, units: int, activation=None) -> torch.Tensor:
    """Keras Dense: activation(x W + b), with PyTorch's (units, inputs) weight layout."""
    y = F.linear(x, w(f"{name}.weight", units, x.shape[-1]), w(f"{name}.bias", units))
    return y if activation is None else activation(y)


def leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAK)


def conv(w: Weights, name: str, x: torch.Tensor, filters: int, kernel: int) -> torch.Tensor:
    """Keras Conv2D(filters, kernel, strides=2, padding="valid", activation=leaky_relu)."""
    weight = w(f"{name}.weight", filters, x.shape[1], kernel, kernel)
    return leaky_relu(F.conv2d(x, weight, w(f"{name}.bias", filters), stride=2))


def deconv(w: Weights, name: str, x: torch.Tensor, filters: int, kernel: int) -> torch.Tensor:
    """Keras Conv2DTranspose(filters, kernel, strides=2, padding="valid"), no activation."""
    weight = w(f"{name}.weight", x.shape[1], filters, kernel, kernel)
    return F.conv_transpose2d(x, weight, w(f"{name}.bias", filters), stride=2)


def gru(w: Weights, name: str, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Keras GRUCell with reset_after=True, on PyTorch's layout: weight_ih = [W_ir; W_iz; W_in], same for _hh.

    z = sigmoid(x W_z + b_z + h U_z + c_z), r = sigmoid(x W_r + b_r + h U_r + c_r),
    candidate = tanh(x W_h + b_h + r * (h U_h + c_h)), h' = z * h + (1 - z) * candidate.
    """
    units = h.shape[-1]
    x_r, x_z, x_h = F.linear(x, w(f"{name}.weight_ih", 3 * units, x.shape[-1]),
                             w(f"{name}.bias_ih", 3 * units)).chunk(3, -1)
    h_r, h_z, h_h = F.linear(h, w(f"{name}.weight_hh", 3 * units, units), w(f"{name}.bias_hh", 3 * units)).chunk(3, -1)
    update = torch.sigmoid(x_z + h_z)
    reset = torch.sigmoid(x_r + h_r)
    candidate = torch.tanh(x_h + reset * h_h)
    return update * h + (1 - update) * candidate


def gaussian(w: Weights, name: str, hl: torch.Tensor, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, stddev) = (Dense(hl), softplus(Dense(hl + 0.54)) + min_std), as in cells.py."""
    mean = dense(w, f"{name}.loc", hl, cfg.z_size)
    stddev = dense(w, f"{name}.scale", hl + STD_INPUT_OFFSET, cfg.z_size, F.softplus) + cfg.min_std
    return mean, stddev


# ----------------------------------------------------------------------------------------- encoder and decoder


def merge_blocks(embedding: torch.Tensor, block: int) -> torch.Tensor:
    """(B, T, F) -> (B, ceil(T / block), F): the sum over each block of frames, the last block zero-padded."""
    B, T, features = embedding.shape
    padded = F.pad(embedding, (0, 0, 0, (-T) % block))
    return padded.view(B, -1, block, features).sum(2)


def encode(w: Weights, video: torch.Tensor, cfg: Config) -> list[torch.Tensor]:
    """cnns.Encoder: the embeddings (B, steps of level l, F) of every level, level 1 first."""
    B, T = video.shape[:2]
    hidden = video.flatten(0, 1)
    for index, filters in enumerate(ENCODER_FILTERS):
        hidden = conv(w, f"encoder.conv.convs.{index}", hidden, filters, 4)
    hidden = hidden.reshape(B, T, -1)
    features = hidden.shape[-1]
    embeddings = [hidden]
    for level in range(2, cfg.levels + 1):
        stack = f"encoder.stacks.{level - 2}"
        for index in range(cfg.enc_dense_layers - 1):  # the stack continues from the level below's output
            hidden = dense(w, f"{stack}.hidden.{index}", hidden, cfg.enc_dense_size, F.relu)
        hidden = dense(w, f"{stack}.out", hidden, features)
        embeddings.append(merge_blocks(hidden, period(cfg, level)))
    return embeddings


def decode_mean(w: Weights, states: torch.Tensor, cfg: Config) -> torch.Tensor:
    """cnns.Decoder: the mean frames (..., C, 64, 64) of level-1 states (..., z + h)."""
    hidden = dense(w, "decoder.dense", states.flatten(0, -2), DECODER_DENSE)[:, :, None, None]  # 1x1 image
    for index, (filters, kernel) in enumerate(DECODER_LAYERS):
        hidden = leaky_relu(deconv(w, f"decoder.deconvs.{index}", hidden, filters, kernel))
    frames = torch.tanh(deconv(w, f"decoder.deconvs.{len(DECODER_LAYERS)}", hidden, cfg.channels, 6))
    return frames.view(*states.shape[:-1], *frames.shape[1:])


# ------------------------------------------------------------------------------------------------------- cells


def deterministic(w: Weights, cfg: Config, level: int, z: torch.Tensor, h: torch.Tensor,
                  context: torch.Tensor) -> torch.Tensor:
    """The GRU step of ``_prior``: h_t from z_{t-1}, h_{t-1} and the context [z, h] of the level above."""
    cell = f"levels.{level - 1}.transition"
    hl = dense(w, f"{cell}.inp", torch.cat([z, context], -1), cfg.embed_size, F.relu)
    return gru(w, f"{cell}.gru", hl, h)


def prior(w: Weights, cfg: Config, level: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The heads of ``_prior``: (mean, stddev) of p(z_t | h_t)."""
    cell = f"levels.{level - 1}.transition"
    return gaussian(w, f"{cell}.head", dense(w, f"{cell}.hidden", h, cfg.embed_size, F.relu), cfg)


def posterior(w: Weights, cfg: Config, level: int, h: torch.Tensor,
              embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``_posterior``: (mean, stddev) of q(z_t | h_t, e_t) from two relu Dense layers on [h_t, e_t]."""
    cell = f"levels.{level - 1}.posterior"
    hl = dense(w, f"{cell}.hidden1", torch.cat([h, embedding], -1), cfg.embed_size, F.relu)
    return gaussian(w, f"{cell}.head", dense(w, f"{cell}.hidden2", hl, cfg.embed_size, F.relu), cfg)


def draw(mean: torch.Tensor, stddev: torch.Tensor) -> torch.Tensor:
    """mean + stddev * eps, eps drawn as ``Normal.rsample`` draws it."""
    return mean + stddev * torch.empty(mean.shape, dtype=mean.dtype, device=mean.device).normal_()


def unroll_level(w: Weights, cfg: Config, level: int, embedding: torch.Tensor, above: torch.Tensor, steps: int,
                 mean_only: bool = False) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``steps`` steps of one level from the zero state; step i reads ``above[:, i // k]``.

    The steps that ``embedding`` (B, observed, F) covers take z from the posterior, the later ones from the prior
    (open-loop); ``mean_only`` takes each distribution's mean instead of a draw. Returns the states [z, h]
    (B, steps, z + h), the posteriors' (mean, stddev) and the h of the observed steps.
    """
    B, observed = embedding.shape[:2]
    z, h = above.new_zeros(B, cfg.z_size), above.new_zeros(B, cfg.h_size)
    states, hs, means, stddevs = [], [], [], []
    for step in range(steps):
        h = deterministic(w, cfg, level, z, h, above[:, step // cfg.factor])
        if step < observed:
            mean, stddev = posterior(w, cfg, level, h, embedding[:, step])
            hs.append(h)
            means.append(mean)
            stddevs.append(stddev)
        else:
            mean, stddev = prior(w, cfg, level, h)
        z = mean if mean_only else draw(mean, stddev)
        states.append(torch.cat([z, h], -1))
    return torch.stack(states, 1), (stack_steps(means, above), stack_steps(stddevs, above)), stack_steps(hs, above)


def stack_steps(tensors: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """(B, n) + shape from n tensors (B, ...); (B, 0, 0) when a level observed no step."""
    return torch.stack(tensors, 1) if tensors else like.new_zeros(like.shape[0], 0, 0)


# ------------------------------------------------------------------------------------------------------ losses


def gaussian_kl(mean_q: torch.Tensor, stddev_q: torch.Tensor, mean_p: torch.Tensor,
                stddev_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mean_q, stddev_q) || N(mean_p, stddev_p)) of diagonal Gaussians, summed over the last dimension."""
    kl = torch.log(stddev_p / stddev_q) + (stddev_q ** 2 + (mean_q - mean_p) ** 2) / (2 * stddev_p ** 2) - 0.5
    return kl.sum(-1)


def normal_nll(x: torch.Tensor, mean: torch.Tensor, stddev: float) -> torch.Tensor:
    """-log N(x; mean, stddev), elementwise."""
    return 0.5 * ((x - mean) / stddev) ** 2 + math.log(stddev) + 0.5 * math.log(2 * math.pi)


def filter_levels(w: Weights, cfg: Config, embeddings: list[torch.Tensor], frames: int,
                  kl_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``hierarchical_unroll`` with every step observed: the level-1 states (B, frames, z + h) and the summed
    KL(posterior || prior) of each level (L,), level 1 first, multiplied by ``kl_scale``."""
    B = embeddings[0].shape[0]
    above = embeddings[0].new_zeros(B, num_steps(cfg, cfg.levels + 1, frames), cfg.z_size + cfg.h_size)  # top: zeros
    kl: list[Optional[torch.Tensor]] = [None] * cfg.levels
    for level in range(cfg.levels, 0, -1):
        above, (mean_q, stddev_q), h = unroll_level(w, cfg, level, embeddings[level - 1], above,
                                                    num_steps(cfg, level, frames))
        # the prior heads of all steps in one call (the official cell runs them step by step: same numbers)
        kl[level - 1] = kl_scale * gaussian_kl(mean_q, stddev_q, *prior(w, cfg, level, h)).sum()
    return above, torch.stack(kl)


def negative_elbo(nets: torch.nn.Module, video: torch.Tensor, cfg: Config, kl_scale: float = 1.0) -> ReferenceTerms:
    """-ELBO of ``video`` (B, T, C, 64, 64) as ``compute_losses``: nats per frame, differentiable in the weights.

    The KL terms are multiplied by ``kl_scale`` (as ``poutine.scale`` does in the Pyro programs).
    """
    w = Weights(nets)
    B, T = video.shape[:2]
    states, kl = filter_levels(w, cfg, encode(w, video, cfg), T, kl_scale)
    reconstruction = normal_nll(video, decode_mean(w, states, cfg), cfg.dec_std).sum()
    frames = B * T
    return ReferenceTerms((reconstruction + kl.sum()) / frames, reconstruction / frames, kl / frames)


# ------------------------------------------------------------------------------------------------- optimizer


class KerasAdam:
    """Keras' Adam: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), w -= lr_t m_t / (sqrt(v_t) + eps), t from 1.

    Its epsilon is added to sqrt(v_t) before the bias correction ("epsilon hat"), unlike torch's Adam.
    """

    def __init__(self, lr: float, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-4):
        self.lr, self.beta_1, self.beta_2, self.epsilon = lr, beta_1, beta_2, epsilon
        self.t = 0
        self.m: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def step(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """The parameters after one update with ``grads`` (new tensors; the inputs are left as they are)."""
        if not self.m:
            self.m = [torch.zeros_like(p) for p in params]
            self.v = [torch.zeros_like(p) for p in params]
        self.t += 1
        lr_t = self.lr * math.sqrt(1 - self.beta_2 ** self.t) / (1 - self.beta_1 ** self.t)
        updated = []
        for index, (param, grad) in enumerate(zip(params, grads)):
            self.m[index] = self.beta_1 * self.m[index] + (1 - self.beta_1) * grad
            self.v[index] = self.beta_2 * self.v[index] + (1 - self.beta_2) * grad * grad
            updated.append(param - lr_t * self.m[index] / (self.v[index].sqrt() + self.epsilon))
        return updated


# ---------------------------------------------------------------------------------------------------- rollout


@torch.no_grad()
def open_loop_states(nets: torch.nn.Module, context: torch.Tensor, num_frames: int, cfg: Config,
                     mean_only: bool = False) -> torch.Tensor:
    """Level-1 states (B, num_frames, z + h) given only the ``context`` frames (B, C_T, C, 64, 64).

    As ``open_loop_unroll``: level l filters the floor(C_T / k**(l-1)) steps whose frames all lie in the context
    with the posterior; its later steps come from the prior. Levels run top-down over all ``num_frames``, so
    each step reads the step of the level above that the clock gives it, filtered or predicted (for a C_T that is
    no multiple of the top period the official code's tiling would misalign; the clock is the model's meaning).
    ``mean_only`` takes every latent's mean instead of a draw.
    """
    w = Weights(nets)
    B, observed = context.shape[:2]
    embeddings = encode(w, context, cfg)
    above = context.new_zeros(B, num_steps(cfg, cfg.levels + 1, num_frames), cfg.z_size + cfg.h_size)
    for level in range(cfg.levels, 0, -1):
        filtered = embeddings[level - 1][:, :observed // period(cfg, level)]  # windows inside the context only
        above = unroll_level(w, cfg, level, filtered, above, num_steps(cfg, level, num_frames), mean_only)[0]
    return above


@torch.no_grad()
def decode(nets: torch.nn.Module, states: torch.Tensor, cfg: Config, chunk: int = DECODE_CHUNK) -> np.ndarray:
    """uint8 frames (B, T, C, 64, 64) of the decoder's means, ``chunk`` frames per decoder call."""
    w = Weights(nets)
    B, T = states.shape[:2]
    frames = np.empty((B, T, cfg.channels, 64, 64), dtype=np.uint8)
    step = max(1, chunk // B)
    for start in range(0, T, step):
        mean = decode_mean(w, states[:, start:start + step], cfg)
        frames[:, start:start + step] = mean.clamp_(0, 1).mul_(255).round_().to(torch.uint8).cpu().numpy()
    return frames


def rollout(nets: torch.nn.Module, context: torch.Tensor, num_frames: int, cfg: Config) -> np.ndarray:
    """Open-loop prediction: uint8 frames (B, num_frames, C, 64, 64), the context's reconstructions first."""
    return decode(nets, open_loop_states(nets, context, num_frames, cfg), cfg)
