r"""Importance-weighted test bounds (Burda et al. 2016): tighter lower bounds on log p(x) than the ELBO of eq. 5.

For a test sequence x of T frames and K draws s_k ~ q(s | x) from the run's guide,

    w_k = p(x, s_k) / q(s_k | x),        IWAE_K = log (1/K) sum_k w_k,        ELBO_K = (1/K) sum_k log w_k,

both in nats per frame (divided by T). By Jensen's inequality ELBO_K <= IWAE_K for the same draws, and in
expectation ELBO <= IWAE_K <= IWAE_2K <= log p(x) (x under the decoder's Normal density, so a "probability" here
is a density over pixel values and the bounds may be positive). IWAE_1 is the one-sample ELBO.

Sign convention: both are lower bounds on a log-likelihood, higher is better; ``-elbo`` estimates the training
loss that ``fit`` prints (the negative ELBO per frame), and ``-iwae`` is the tighter number to compare variants by.

The weights come from the run's own programs: the guide traced with ``poutine.trace``, the model replayed on its
draws with ``poutine.replay``, inside ``sharing_steps(nets)`` as in ``elbo.py``. Pyro's
``RenyiELBO(alpha=0)`` computes the same bound but returns only the sum over the batch as a float, takes its
particles either one program run at a time or in a new leading dimension the networks do not accept (they read
(B, T, ...) videos), and sums log weights in float32. Here the K particles of each sequence are rows of one batch
instead (the video repeated K times), processed a chunk of rows at a time so memory stays bounded, and the log
weights are summed and log-sum-exp'ed in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites
from tqdm.auto import tqdm

from pyro_cwvae.errors import UserError
from pyro_cwvae.model.step_sharing import sharing_steps

BATCH_PLATE = "batch"  # the plate over sequences that every site of the programs lies in
FRAMES_PER_CALL = 2048  # rows x frames traced at once: bounds the encoder's activations whatever K and T


@dataclass
class ImportanceWeights:
    """The log weights log p(x, s_k) - log q(s_k | x) in nats, (sequences, particles), of ``frames``-frame videos."""

    log_weights: np.ndarray
    frames: int

    @property
    def particles(self) -> int:
        return self.log_weights.shape[1]

    @property
    def iwae(self) -> np.ndarray:
        """IWAE_K of each sequence, nats per frame: log mean_k w_k / T (a lower bound on log p(x) / T)."""
        log_mean = torch.logsumexp(torch.from_numpy(self.log_weights), dim=1) - math.log(self.particles)
        return log_mean.numpy() / self.frames

    @property
    def elbo(self) -> np.ndarray:
        """The ELBO of each sequence estimated from the same K draws, nats per frame: mean_k log w_k / T."""
        return self.log_weights.mean(axis=1) / self.frames


@torch.no_grad()
def importance_weighted_bound(run, video: torch.Tensor, particles: int, *, frames_per_call: int = FRAMES_PER_CALL,
                              progress: bool = False) -> ImportanceWeights:
    """The K = ``particles`` importance weights of each sequence of ``video`` (B, T, C, 64, 64) in [0, 1] under
    ``run`` (a ``prediction.Run``: cfg, nets, model, guide); ``.iwae`` and ``.elbo`` give the bounds.
    Row r of the flattened (B * K) batch is particle r % K of sequence r // K; rows are traced in chunks of about
    ``frames_per_call`` frames."""
    if particles < 1:
        raise UserError(f"--particles must be at least 1, got {particles}")
    B, T = video.shape[:2]
    rows = torch.arange(B * particles, device=video.device)
    chunk = max(1, frames_per_call // T)
    log_weights = [chunk_log_weights(run, video[part // particles])
                   for part in tqdm(rows.split(chunk), desc="importance weights", unit="chunk", disable=not progress)]
    return ImportanceWeights(torch.cat(log_weights).view(B, particles).cpu().numpy(), T)


def chunk_log_weights(run, video: torch.Tensor) -> torch.Tensor:
    """log p(x, s) - log q(s | x) in nats, float64, of each row of ``video`` for one draw s ~ q(s | x)."""
    with sharing_steps(run.nets):  # the model reuses the guide's GRU steps
        guide_trace = poutine.trace(run.guide).get_trace(video, run.nets, run.cfg)
        model_trace = poutine.trace(poutine.replay(run.model, trace=guide_trace)).get_trace(video, run.nets, run.cfg)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    rows = video.shape[0]
    log_q = sum(per_sequence(site, rows) for site in sample_sites(guide_trace))
    # a model latent the guide does not draw is drawn from its prior by the replay: its p / q is 1
    log_p = sum(per_sequence(site, rows) for site in sample_sites(model_trace)
                if site["is_observed"] or site["name"] in guide_trace)
    return log_p - log_q


def sample_sites(trace: poutine.Trace) -> list[dict]:
    """The sample sites of ``trace``, without the plates' subsample sites."""
    return [site for site in prune_subsample_sites(trace).nodes.values() if site["type"] == "sample"]


def per_sequence(site: dict, rows: int) -> torch.Tensor:
    """The (scaled, masked) log density of ``site`` summed over everything but the batch plate: (rows,) float64."""
    dims = [frame.dim for frame in site["cond_indep_stack"] if frame.name == BATCH_PLATE]
    if not dims:
        raise UserError(f"site {site['name']!r} lies outside the {BATCH_PLATE!r} plate: "
                        f"a per-sequence bound needs every sample site inside it")
    return site["log_prob"].double().movedim(dims[0], 0).reshape(rows, -1).sum(1)
