"""Do the priors predict, or only their draws fail? Open-loop predictions from prior draws and from prior means.

    python -m experiments.prior_means RUN [RUN ...]          # 16 test videos, the run's context, 36 frames ahead
    python -m experiments.prior_means RUN --sequences 100 --horizon 100

A rollout draws every latent after the context from its prior. If the prior's mean carries the digits but its
spread is wide, each draw loses them while the mean keeps them; if the mean loses them too, the dynamics (the
deterministic states) do not hold the content. For each run this predicts the same test videos both ways, with
the context filtered as ``pyro-cwvae rollout`` filters it, and prints the digit classifier's pair accuracy and the
pixel MSE over the first 6 and all predicted frames, beside the copy-last-frame baseline. A second table says
why the draws wander: over the context, each level's KL per step split into what the prior's width costs and what
its mean's offset from the posterior's costs. Writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.distributions import Normal
from pyro.poutine.messenger import Messenger

from experiments.common import description, run_script
from experiments.results import markdown
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.accuracy import DigitAccuracy
from pyro_cwvae.evaluation.digits import digit_classifier
from pyro_cwvae.model.clock import Clock
from pyro_cwvae.prediction import Intervention, PredictionOptions, Run, decode, load_run, sampled_trace
from pyro_cwvae.prediction.frames import unit_frames
from pyro_cwvae.prediction.kl import filtered_traces

FIRST = 6  # the first predicted frames, before any prior has been applied many times over


class PriorMeans(Messenger):
    """Every latent site ``s_{l}_{t}`` takes the mean of its distribution instead of a draw. Under the rollout's
    replay of the context's latents, the sites the guide filtered keep their values: the replay acts after this."""

    def _pyro_sample(self, msg):
        if Clock.parse_site(msg["name"]) and not msg["is_observed"]:
            msg["value"], msg["done"] = msg["fn"].mean, True


def predict(run: Run, truth: np.ndarray, context: int, means: bool, seed: int = 0) -> np.ndarray:
    """uint8 frames (N, T, C, 64, 64) of the package's rollout of ``truth``'s T frames given its first
    ``context``: from prior draws, or with the model under ``PriorMeans``."""
    run = dataclasses.replace(run, model=PriorMeans()(run.model)) if means else run
    trace = sampled_trace(run, truth, context, 1, Intervention(), seed)
    return decode(run, trace.nodes["_RETURN"]["value"])


def measures(frames: np.ndarray, truth: np.ndarray, labels: np.ndarray, context: int,
             accuracy: DigitAccuracy) -> list[float]:
    """Digit-pair accuracy and pixel MSE over the first ``FIRST`` and all predicted frames; ``labels`` (N, 2)."""
    predicted = frames[:, context:]
    correct = accuracy.correct(accuracy.read(predicted), np.broadcast_to(labels[:, None], (*predicted.shape[:2], 2)))
    error = ((predicted.astype(np.float64) - truth[:, context:]) / 255) ** 2
    return [correct[:, :FIRST].mean(), correct.mean(), error[:, :FIRST].mean(), error.mean()]


def main(argv=None) -> None:
    args = argparse.ArgumentParser(description=description(__doc__))
    args.add_argument("runs", nargs="+", type=Path, help="run directories (trained on Moving MNIST)")
    args.add_argument("--sequences", type=int, default=16, help="test videos [16]")
    args.add_argument("--context", type=int, default=None, help="frames filtered before the prediction [the run's]")
    args.add_argument("--horizon", type=int, default=36, help="frames predicted after the context [36]")
    args = args.parse_args(argv)
    options = PredictionOptions(context=args.context, horizon=args.horizon, sequences=args.sequences).check()
    accuracy = DigitAccuracy(digit_classifier())
    rows, widths = [], []
    for path in args.runs:
        run = load_run(path, device="cpu")
        rows += run_rows(path, run, options, accuracy)
        widths += width_rows(path, run, options)
    print(markdown(["run", "prediction", f"digits 1-{FIRST}", f"digits 1-{args.horizon}", f"MSE 1-{FIRST}",
                    f"MSE 1-{args.horizon}"], rows))
    print()
    print(markdown(["run", "level", "context steps", "KL per step", "from the width", "from the mean",
                    "prior std / posterior std", "mean offset (prior stds)"], widths))


def run_rows(path: Path, run: Run, options: PredictionOptions, accuracy: DigitAccuracy) -> list[list]:
    """The table's rows of one run: its predictions from prior draws and from prior means, then the baseline."""
    data = run.dataset()
    if not hasattr(data, "test_labels"):
        raise UserError(f"{path} was not trained on generated Moving MNIST: its digits are not known")
    context = options.context_of(run.cfg)
    truth = np.stack([data.test_video(i)[:context + options.horizon] for i in range(options.sequences)])
    labels = np.stack([data.test_labels(i) for i in range(options.sequences)])
    last = np.repeat(truth[:, context - 1:context], truth.shape[1], 1)
    name = f"{path.name} (step {run.step})"
    rows = []
    for label, how, frames in ((name, "prior draws", predict(run, truth, context, False, options.seed)),
                               (name, "prior means", predict(run, truth, context, True, options.seed)),
                               ("", "copy last frame", last)):
        values = measures(frames, truth, labels, context, accuracy)
        rows.append([label, how, *(f"{v:.3f}" for v in values[:2]), *(f"{v:.4f}" for v in values[2:])])
    return rows


def kl_parts(q: Normal, p: Normal) -> tuple[torch.Tensor, torch.Tensor]:
    """KL[q || p] of diagonal Normals, summed over the last dimension, as two parts: what the prior's width costs,
    log r + 1 / (2 r^2) - 1/2 per dimension with r = p's std / q's (0 at r = 1), and what its mean's offset costs,
    (mu_q - mu_p)^2 / (2 sigma_p^2)."""
    r = p.scale / q.scale
    return (r.log() + 0.5 / r ** 2 - 0.5).sum(-1), ((q.loc - p.loc) ** 2 / (2 * p.scale ** 2)).sum(-1)


@torch.no_grad()
def width_rows(path: Path, run: Run, options: PredictionOptions) -> list[list]:
    """A row per level: over the steps after its first whose frames the context holds, the mean KL per step of
    the first test videos' filtering, from the prior's width and from its mean; the prior's std over the
    posterior's (geometric mean over dimensions, steps and videos); the posterior's mean offset from the prior's
    in prior stds (root mean square)."""
    context = options.context_of(run.cfg)
    video = unit_frames(np.stack([run.dataset().test_video(i)[:context] for i in range(options.sequences)]), "cpu")
    pyro.set_rng_seed(options.seed)  # the posterior of a step depends on the draws before it
    guide_trace, model_trace = filtered_traces(run, video)
    parts = {level: [] for level in range(1, run.cfg.levels + 1)}
    for name, site in guide_trace.nodes.items():
        parsed = Clock.parse_site(name)
        if parsed is None or parsed[1] == 0 or parsed[1] + run.cfg.clock.period(parsed[0]) > context:
            continue
        q, p = (getattr(s["fn"], "base_dist", s["fn"]) for s in (site, model_trace.nodes[name]))
        if not (isinstance(q, Normal) and isinstance(p, Normal)):
            raise UserError(f"{path}: {name} is not a Normal latent; the KL's split needs Normal priors and posteriors")
        width, offset = kl_parts(q, p)
        parts[parsed[0]].append((width, offset, (p.scale / q.scale).log().mean(-1), (q.loc - p.loc) / p.scale))
    rows = []
    for level, steps in parts.items():
        if not steps:
            continue
        width, offset, log_ratio = (torch.stack([step[i] for step in steps]).mean().item() for i in range(3))
        rms = torch.stack([step[3] for step in steps]).pow(2).mean().sqrt().item()
        rows.append([f"{path.name} (step {run.step})", level, len(steps), f"{width + offset:.1f}", f"{width:.1f}",
                     f"{offset:.1f}", f"{np.exp(log_ratio):.2f}", f"{rms:.2f}"])
    return rows


if __name__ == "__main__":
    run_script(main)
