"""Do the priors predict, or only their draws fail? Open-loop predictions from prior draws and from prior means.

    python -m experiments.prior_means RUN [RUN ...]          # 16 test videos, the run's context, 36 frames ahead
    python -m experiments.prior_means RUN --sequences 100 --horizon 100

A rollout draws every latent after the context from its prior. If the prior's mean carries the digits but its
spread is wide, each draw loses them while the mean keeps them; if the mean loses them too, the dynamics (the
deterministic states) do not hold the content. For each run this predicts the same test videos both ways, with
the context filtered as ``pyro-cwvae rollout`` filters it, and prints the digit classifier's pair accuracy and the
pixel MSE over the first 6 and all predicted frames, beside the copy-last-frame baseline. Writes nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
from pyro.poutine.messenger import Messenger

from experiments.common import description, run_script
from experiments.results import markdown
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.accuracy import DigitAccuracy
from pyro_cwvae.evaluation.digits import digit_classifier
from pyro_cwvae.model.clock import Clock
from pyro_cwvae.prediction import Intervention, PredictionOptions, Run, decode, load_run, sampled_trace

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
    rows = []
    for path in args.runs:
        rows += run_rows(path, load_run(path, device="cpu"), options, accuracy)
    print(markdown(["run", "prediction", f"digits 1-{FIRST}", f"digits 1-{args.horizon}", f"MSE 1-{FIRST}",
                    f"MSE 1-{args.horizon}"], rows))


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


if __name__ == "__main__":
    run_script(main)
