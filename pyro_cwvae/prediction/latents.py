"""The latents of a rollout (paper Section 3, "Evaluation"), and interventions on its levels (``Intervention``,
options.py).

The guide filters the first ``context`` frames (each level the steps whose window of frames lies wholly inside
the context, as the official code does; the others are drawn from the prior); the model then runs over all the
frames with those latents replayed and every later latent drawn from its prior, so no frame after the context can
reach a prediction. Everything is done with the run's own model and guide programs through ``poutine`` handlers
on the sites ``s_{l}_{t}`` (one per level and step), so a variant a user trained is rolled out, and intervened on,
as written:

- ``prior_levels`` N: the top N levels ignore the context and start from their prior (paper Section 3.6, Fig. 7);
- ``swap_levels`` L with ``from_sequence`` J: the sites of levels >= L, context and prediction, are replayed from
  sequence J's plain rollout (same seed, same sample), and the levels below filter their own context frames
  conditioned on them: the slow levels of one video with the fast levels of another;
- ``fix_level`` L: level L's sites after the context are conditioned (``poutine.condition``) on its last context
  site's value, so the latent of that level stops changing. Its GRU state h is no site but a deterministic
  function of the latents, so it still steps on.
"""
from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.runtime import NonlocalExit

from pyro_cwvae.model.config import Config
from pyro_cwvae.model.elbo import level_of
from pyro_cwvae.model.step_sharing import sharing_steps
from pyro_cwvae.prediction.frames import unit_frames
from pyro_cwvae.prediction.options import Intervention
from pyro_cwvae.prediction.run import Run


def sampled_trace(run: Run, truth: np.ndarray, context: int, samples: int, intervention: Intervention,
                  seed: int) -> poutine.Trace:
    """``rollout_trace`` of ``samples`` predictions of each ``truth`` video (N, T, C, 64, 64) uint8 from its first
    ``context`` frames, over all T frames, the noise seeded by ``seed``."""
    pyro.set_rng_seed(seed)
    device = next(run.nets.parameters()).device
    context_video = unit_frames(truth[:, :context], device).repeat(samples, 1, 1, 1, 1)
    return rollout_trace(run, context_video, truth.shape[1], truth.shape[0], intervention)


@torch.no_grad()
def rollout_trace(run: Run, context: torch.Tensor, num_frames: int, sequences: int | None = None,
                  intervention: Intervention = Intervention()) -> poutine.Trace:
    """The model's trace of a rollout over ``num_frames`` frames given the ``context`` frames (B, C_T, C, 64, 64),
    B = samples x ``sequences`` rows, sample-major (``sequences`` None: B, one sample each), under
    ``intervention``. The level-1 states (B, T, state), the decoder's input, are the trace's ``_RETURN`` value.
    Noise is drawn in this order: for a swap, first sequence J's plain rollout of the swapped levels; then the
    context's latents (``context_latents``); then the model's prior over the remaining sites."""
    B, T = context.shape[:2]
    sequences = B if sequences is None else sequences
    with sharing_steps(run.nets):  # the passes reuse each other's GRU steps
        if intervention.swap_levels is None:
            decided = context_latents(run, context, intervention.prior_levels)
        else:
            swapped = swapped_sites(run, context, num_frames, sequences, intervention)
            decided = latents_level_by_level(run, context, intervention.prior_levels, given=swapped)
        model = poutine.replay(run.model, trace=decided)
        if intervention.fix_level is not None:
            model = poutine.condition(model, data=held_sites(run.cfg, decided, intervention.fix_level, T,
                                                              num_frames))
        return poutine.trace(model).get_trace(None, run.nets, run.cfg, num_frames=num_frames, batch_size=B)


def context_latents(run: Run, context: torch.Tensor, prior_levels: int = 0) -> poutine.Trace:
    """The latent sites of the context frames (B, C_T, C, 64, 64), decided level by level from the top.

    Level l filters the context with the guide for its ``filtered_steps``; its other context steps (a window only
    partly inside the context, or a level among the top ``prior_levels``) are drawn from the model's prior. The
    levels below then filter their frames conditioned on those draws. Our clock keeps eq. 1's alignment (step i of
    level l conditions steps i*k .. i*k + k-1 of the level below) for any context; the official code only accepts
    contexts that are multiples of k**(L-1) (``tools.validate_config``), and its tiling of the level above would
    misalign the lower levels otherwise.

    Noise is drawn in this order: for l = L .. 1, the filtered steps of level l in time order, then its steps from
    the prior in time order.
    """
    if prior_levels == 0 and context.shape[1] % run.cfg.clock.top_period == 0:  # every step filters: one pass
        return poutine.trace(run.guide).get_trace(context, run.nets, run.cfg)
    return latents_level_by_level(run, context, prior_levels)


def latents_level_by_level(run: Run, context: torch.Tensor, prior_levels: int,
                           given: poutine.Trace | None = None) -> poutine.Trace:
    """``context_latents`` in general: per level a guide pass for its filtered steps and a model pass for the rest,
    each replayed on the levels above and stopped before the levels below. Sites in ``given`` (an intervention's)
    are kept as they are, and the others are decided conditioned on them."""
    cfg, clock = run.cfg, run.cfg.clock
    B, T = context.shape[:2]
    decided = poutine.Trace() if given is None else given.copy()
    for level in range(cfg.levels, 0, -1):
        sites = [clock.site_name(level, frame) for frame in clock.active_frames(level, T)]
        filtered = set(sites[:filtered_steps(cfg, level, T, prior_levels)]) - set(decided.nodes)
        from_prior = set(sites) - filtered - set(decided.nodes)
        if filtered:  # q(s_t^l | s_{t-1}^l, s_t^{l+1}, e_t^l) on fully observed windows
            keep(decided, trace_until(run.guide, decided, filtered, context, run.nets, cfg), filtered)
        if from_prior:  # p(s_t^l | s_{t-1}^l, s_t^{l+1})
            keep(decided, trace_until(run.model, decided, from_prior, None, run.nets, cfg, num_frames=T,
                                      batch_size=B), from_prior)
    return decided


def swapped_sites(run: Run, context: torch.Tensor, num_frames: int, sequences: int,
                  intervention: Intervention) -> poutine.Trace:
    """The sites of levels >= ``swap_levels`` over all ``num_frames`` frames, every row holding the value that row
    of sequence ``from_sequence`` (the same sample) has in the plain rollout: a point mass at that value.
    The plain rollout is run only as far as those sites: its context latents, then the model's prior down to the
    first site below them."""
    cfg, clock = run.cfg, run.cfg.clock
    B = context.shape[0]
    names = [clock.site_name(level, frame) for level in range(cfg.levels, intervention.swap_levels - 1, -1)
             for frame in clock.active_frames(level, num_frames)]
    plain = context_latents(run, context, intervention.prior_levels)
    upper = trace_until(run.model, plain, set(names), None, run.nets, cfg, num_frames=num_frames, batch_size=B)
    swapped = poutine.Trace()
    for name in names:
        site = upper.nodes[name]
        value = site["value"]
        donor = value.view(B // sequences, sequences, *value.shape[1:])[:, intervention.from_sequence]
        value = donor.repeat_interleave(sequences, 0)  # row s x N + n gets sample s of sequence J
        swapped.add_node(name, **{**site, "value": value, "fn": dist.Delta(value, event_dim=site["fn"].event_dim)})
    return swapped


def held_sites(cfg: Config, decided: poutine.Trace, level: int, context_frames: int, num_frames: int
               ) -> dict[str, torch.Tensor]:
    """Every site of ``level`` after the ``context_frames``, mapped to the value of its last context site."""
    clock = cfg.clock
    frames = clock.active_frames(level, num_frames)
    last = max(frame for frame in frames if frame < context_frames)
    value = decided.nodes[clock.site_name(level, last)]["value"]
    return {clock.site_name(level, frame): value for frame in frames if frame >= context_frames}


def filtered_steps(cfg: Config, level: int, context_frames: int, prior_levels: int) -> int:
    """Steps of ``level`` whose posterior filters the context: those whose window of k**(l-1) frames lies wholly
    inside it, floor(context / k**(l-1)) as in the official ``open_loop_unroll``; none for the top ``prior_levels``."""
    if level > cfg.levels - prior_levels:
        return 0
    return context_frames // cfg.clock.period(level)


def trace_until(fn, decided: poutine.Trace, wanted: set[str], *args, **kwargs) -> poutine.Trace:
    """Trace of ``fn`` replayed on ``decided``, stopped at the first latent site neither decided nor ``wanted``.
    Stopping there means the sites below are neither computed nor drawn: each pass consumes noise only for the
    sites it keeps."""
    def undecided(msg) -> bool:
        return level_of(msg["name"]) is not None and msg["name"] not in decided and msg["name"] not in wanted

    tracer = poutine.trace(poutine.escape(poutine.replay(fn, trace=decided), escape_fn=undecided))
    try:
        tracer(*args, **kwargs)
    except NonlocalExit:
        pass  # the rest of the program is not needed
    return tracer.trace


def keep(decided: poutine.Trace, trace: poutine.Trace, names: set[str]) -> None:
    """Add the sites ``names`` of ``trace`` to ``decided``."""
    for name in names:
        decided.add_node(name, **trace.nodes[name])
