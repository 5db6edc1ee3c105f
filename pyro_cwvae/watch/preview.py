"""Previews during training (``--preview-every N``): whether the predictions keep the content, while the run trains.

Every N steps: open-loop predictions of the first ``SEQUENCES`` test videos from the run's ``--context`` frames over
``TOP_STEPS`` steps of the top level (long enough for the slow levels to matter), one sample each, from a fixed
seed; their PSNR and SSIM under the paper's protocol (as ``pyro-cwvae rollout`` scores them) beside those of the two
baselines, and the dataset's accuracy where it needs nothing trained (the digit classifier only when cached,
``pyro-cwvae classifier train``). The values go into history.nc as ``preview_*`` variables, a strip and a video to
TensorBoard. The training loop runs previews so that they cannot change what is learned (training/watching.py).
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pyro_cwvae.data import DatasetError, VideoDataset
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.accuracy import ACCURACIES, Accuracy, DigitAccuracy, accuracy_for
from pyro_cwvae.evaluation.digit_record import classifier_path, read_record
from pyro_cwvae.evaluation.digits import load
from pyro_cwvae.evaluation.scoring import finite_mean
from pyro_cwvae.model.config import Config
from pyro_cwvae.model.programs import Programs
from pyro_cwvae.prediction.frames import baseline_frames, decode_and_score, read_test_frames, score_frames
from pyro_cwvae.prediction.latents import sampled_trace
from pyro_cwvae.prediction.options import Intervention, PredictionOptions
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.prediction.scores import PROTOCOLS
from pyro_cwvae.training.watching import Watcher
from pyro_cwvae.watch.images import preview_strip, preview_video

SEQUENCES = 4  # test videos predicted at each preview (or all, if fewer): the first ones, the same every time
TOP_STEPS = 3  # the horizon, in steps of the top level
SEED = 0  # the noise of the predictions and the random-frame baseline: the same at every preview
PROTOCOL = PROTOCOLS[PredictionOptions().protocol]  # rollout's default: the paper's
BASELINES = ("last_frame", "random_frame")


class Previews(Watcher):
    """The previews of one run; ``board`` (a ``TensorBoardLog``) shows their images, ``say`` prints a line each."""

    def __init__(self, cfg: Config, dataset: VideoDataset, board=None, classifier: torch.nn.Module | None = None,
                 say: Callable[[str], None] | None = tqdm.write):
        self.cfg, self.every, self.board, self.say = cfg, cfg.preview_every, board, say
        self.context, horizon = cfg.context, TOP_STEPS * cfg.clock.top_period
        try:
            sequences = min(SEQUENCES, dataset.num_test)  # a small archive may hold fewer test videos
            self.truth, has_truth, _ = read_test_frames(dataset, sequences, self.context + horizon, self.context)
        except (UserError, DatasetError) as error:
            raise UserError(f"previews: {error} (--preview-every 0 turns them off)") from None
        self.predicted = has_truth & (np.arange(self.truth.shape[1]) >= self.context)
        self.accuracy = preview_accuracy(cfg, classifier, say)
        self.labels = self.accuracy.labels(self.truth, dataset)[0] if self.accuracy else None
        self.baselines = self.score_baselines(dataset)
        self.programs: Programs | None = None

    def started(self, step: int, programs: Programs) -> None:
        self.programs = programs

    def wants(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def after_step(self, step: int, nets: torch.nn.Module) -> tuple[dict[str, float], dict[str, dict]]:
        started = time.perf_counter()
        run = Run(self.cfg, nets, self.programs.model.fn, self.programs.guide.fn, step)
        trace = sampled_trace(run, self.truth, self.context, 1, Intervention(), SEED)
        frames, psnr, ssim = decode_and_score(run, trace.nodes["_RETURN"]["value"], self.truth, PROTOCOL)
        values = {"psnr": self.mean(psnr), "ssim": self.mean(ssim), **self.baselines}
        if self.accuracy is not None:
            values[self.accuracy.name] = self.mean(self.accuracy.correct(self.accuracy.read(frames), self.labels))
        if self.board is not None:
            self.board.preview(step, values, preview_strip(self.truth, frames, self.context),
                               preview_video(self.truth, frames, self.context))
        if self.say is not None:
            self.say(self.describe(step, values, time.perf_counter() - started))
        return values, self.attrs()

    def mean(self, scores: np.ndarray) -> float:
        """The mean of per-frame scores (sequence, time) over the predicted frames (+inf, a perfect frame, left
        out as the evaluation does)."""
        return float(finite_mean(np.where(self.predicted, scores, np.nan).reshape(-1, 1))[0])

    def score_baselines(self, dataset: VideoDataset) -> dict[str, float]:
        """The baselines' values: they predict the same frames at every preview, so they are scored once."""
        values = {}
        for name, frame in baseline_frames(dataset, self.truth, self.context, SEED).items():
            psnr, ssim = score_frames(frame, self.truth, PROTOCOL, torch.device("cpu"))
            values[f"psnr_{name}"], values[f"ssim_{name}"] = self.mean(psnr), self.mean(ssim)
            if self.accuracy is not None:
                readings = self.accuracy.still(frame, self.truth, self.context)
                values[f"{self.accuracy.name}_{name}"] = self.mean(self.accuracy.correct(readings, self.labels))
        return values

    def attrs(self) -> dict[str, dict]:
        """The attributes of each preview variable in history.nc."""
        horizon = self.truth.shape[1] - self.context
        what = (f"over open-loop frames 1-{horizon} after {self.context} context frames of the first "
                f"{len(self.truth)} test videos, one sample each ({PROTOCOL.name} protocol)")
        about = {"psnr": ("PSNR of the predictions", "dB"), "ssim": ("SSIM of the predictions", "1")}
        for name in BASELINES:
            shown = name.replace("_", " ")
            about[f"psnr_{name}"] = (f"PSNR of repeating the {shown}", "dB")
            about[f"ssim_{name}"] = (f"SSIM of repeating the {shown}", "1")
        if self.accuracy is not None:
            about[self.accuracy.name] = (self.accuracy.long_name, "1")
            for name in BASELINES:
                about[f"{self.accuracy.name}_{name}"] = (f"{self.accuracy.name} of repeating the "
                                                         f"{name.replace('_', ' ')}", "1")
        return {name: {"long_name": f"mean {long_name} {what}", "units": units}
                for name, (long_name, units) in about.items()}

    def describe(self, step: int, values: dict[str, float], seconds: float) -> str:
        """One line for the user: the preview's scores against the baselines', and its cost."""
        def against(metric: str, form: str) -> str:
            return (f"{metric} {values[metric]:{form}} (last frame {values[metric + '_last_frame']:{form}}, "
                    f"random frame {values[metric + '_random_frame']:{form}})")

        parts = [against("ssim", ".3f"), against("psnr", ".2f")]
        if self.accuracy is not None:
            parts.append(against(self.accuracy.name, ".2f"))
        return f"preview at step {step}: " + ", ".join(parts) + f"; {seconds:.1f} s"


def preview_accuracy(cfg: Config, classifier: torch.nn.Module | None, say: Callable[[str], None] | None
                     ) -> Accuracy | None:
    """The dataset's accuracy for previews (``accuracy_for``), read on the CPU; the digit accuracy only with a
    classifier given or cached, since previews never train one (that takes minutes)."""
    if ACCURACIES.get(cfg.dataset) is DigitAccuracy and classifier is None:
        if read_record(classifier_path()) is None:
            if say is not None:
                say("previews without digit accuracy: no digit classifier is cached (pyro-cwvae classifier train)")
            return None
        classifier = load(classifier_path(), "cpu")
    return accuracy_for(cfg.dataset, cfg.channels, classifier, torch.device("cpu"), None)
