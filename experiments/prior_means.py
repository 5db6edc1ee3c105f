"""Do the priors predict, or only their draws fail? Open-loop predictions from prior draws and from prior means.

    python experiments/prior_means.py RUN [RUN ...]                 # 16 test videos, context 36, 36 frames ahead
    python experiments/prior_means.py RUN --sequences 100 --ahead 100

A rollout draws every latent after the context from its prior. If the prior's mean carries the digits but its
spread is wide, each draw loses them while the mean keeps them; if the mean loses them too, the dynamics (the
deterministic states) do not hold the content. For each run this predicts the same test videos both ways, with
the context filtered as ``pyro-cwvae rollout`` filters it, and prints the digit classifier's pair accuracy and the
pixel MSE over the first 6 and all predicted frames, beside the copy-last-frame baseline. Writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from experiments.common import markdown  # noqa: E402
from pyro_cwvae.api import load_run  # noqa: E402
from pyro_cwvae.classifier import digit_classifier, digit_pair_accuracy  # noqa: E402
from pyro_cwvae.clock import Clock  # noqa: E402
from pyro_cwvae.predict import TrainedRun, context_latents, decode, unit_frames  # noqa: E402

FIRST = 6  # the first predicted frames, before any prior has been applied many times over


class PriorMeans(Messenger):
    """Every latent site ``s_{l}_{t}`` not in ``decided`` takes the mean of its distribution instead of a draw."""

    def __init__(self, decided: set[str]):
        super().__init__()
        self.decided = decided

    def _pyro_sample(self, msg):
        if Clock.parse_site(msg["name"]) and msg["name"] not in self.decided and not msg["is_observed"]:
            msg["value"], msg["done"] = msg["fn"].mean, True


@torch.no_grad()
def predict(run: TrainedRun, truth: np.ndarray, context: int, means: bool, seed: int = 0) -> np.ndarray:
    """uint8 frames (N, T, C, 64, 64) of the run's model over ``truth``'s T frames given its first ``context``."""
    pyro.set_rng_seed(seed)
    device = next(run.nets.parameters()).device
    with run.nets.sharing_deterministic_path():
        decided = context_latents(run, unit_frames(truth[:, :context], device))
        model = PriorMeans(set(decided.nodes))(run.model) if means else run.model
        states = poutine.replay(model, trace=decided)(None, run.nets, run.cfg, num_frames=truth.shape[1],
                                                      batch_size=truth.shape[0])
    return decode(run, states)


def measures(frames: np.ndarray, truth: np.ndarray, labels: np.ndarray, context: int, net) -> list[float]:
    """Digit-pair accuracy and pixel MSE over the first ``FIRST`` and all predicted frames."""
    correct = digit_pair_accuracy(frames[:, context:], labels[:, None], net)
    error = ((frames[:, context:].astype(np.float64) - truth[:, context:]) / 255) ** 2
    return [correct[:, :FIRST].mean(), correct.mean(), error[:, :FIRST].mean(), error.mean()]


def main(argv=None) -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("runs", nargs="+", type=Path, help="run directories (trained on Moving MNIST)")
    args.add_argument("--sequences", type=int, default=16, help="test videos [16]")
    args.add_argument("--context", type=int, default=36, help="frames filtered before the prediction [36]")
    args.add_argument("--ahead", type=int, default=36, help="frames predicted [36]")
    args = args.parse_args(argv)
    net = digit_classifier()
    rows = []
    for path in args.runs:
        run = load_run(path, device="cpu")
        data = run.dataset()
        if not hasattr(data, "test_labels"):
            raise SystemExit(f"error: {path} was not trained on generated Moving MNIST: its digits are not known")
        truth = np.stack([data.test_video(i)[:args.context + args.ahead] for i in range(args.sequences)])
        labels = np.stack([data.test_labels(i) for i in range(args.sequences)])
        for how, means in (("prior draws", False), ("prior means", True)):
            values = measures(predict(run.trained, truth, args.context, means), truth, labels, args.context, net)
            rows.append([f"{path.name} (step {run.step})", how, *(f"{v:.3f}" for v in values[:2]),
                         *(f"{v:.4f}" for v in values[2:])])
        last = np.repeat(truth[:, args.context - 1:args.context], args.ahead + args.context, 1)
        values = measures(last, truth, labels, args.context, net)
        rows.append(["", "copy last frame", *(f"{v:.3f}" for v in values[:2]), *(f"{v:.4f}" for v in values[2:])])
    print(markdown(["run", "prediction", f"digits 1-{FIRST}", f"digits 1-{args.ahead}", f"MSE 1-{FIRST}",
                    f"MSE 1-{args.ahead}"], rows))


if __name__ == "__main__":
    main()
