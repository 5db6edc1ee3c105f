"""The high-level accuracy of the paper's Figure 5: whether a predicted frame still shows what the true video shows
at that time. Moving MNIST: the pair of digits a classifier reads (``digits.py``); GQN Mazes: the category of the
rooms visited so far, from colour histograms (``rooms.py``).

Every accuracy reads frames one chunk of time at a time (``read``), so predictions are scored as they are
decoded, and then judges the readings of whole videos against the labels of the true ones (``correct``): the
room category of frame t depends on frames 0..t. A new accuracy is a subclass and a row of ``ACCURACIES``.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.evaluation.digits import digit_classifier, read_pairs, same_pairs
from pyro_cwvae.evaluation.rooms import colour_histograms, histogram_categories


class Accuracy:
    """One high-level accuracy: its variable's ``name`` and description, and the ``channels`` it reads."""

    name: str
    channels: int
    long_name: str
    frames: str  # what it reads
    ceiling_name: str  # the long name of its accuracy on the true frames, where the labels can be known

    @classmethod
    def load(cls, classifier: nn.Module | None, device: torch.device, say: Callable[[str], None] | None
             ) -> Accuracy:
        """The accuracy ready to read frames on ``device``; ``classifier`` given (a test's stand-in) or loaded."""
        return cls()

    def read(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """What each uint8 frame (B, n, C, 64, 64) shows: (B, n, ...)."""
        raise NotImplementedError

    def correct(self, readings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Whether each frame of videos read as ``readings`` (B, T, ...) shows the label (N, T, ...) of its true
        video; B is samples x N, sample-major: (B, T) booleans."""
        raise NotImplementedError

    def labels(self, truth: np.ndarray, dataset: VideoDataset) -> tuple[np.ndarray, bool]:
        """The label (N, T, ...) of each true frame (N, T, C, 64, 64), and whether it comes from the data (then
        ``correct`` of the true frames is the ceiling of the accuracy; else it is 1 by construction)."""
        raise NotImplementedError

    def still(self, frame: np.ndarray, truth: np.ndarray, context: int) -> np.ndarray:
        """The readings (N, T, ...) of a prediction that shows ``frame`` (N, 1, C, 64, 64) at every time."""
        return np.repeat(self.read(frame), truth.shape[1], axis=1)

    def attrs(self, labels_known: bool) -> dict[str, str]:
        return {"long_name": self.long_name, "units": "1", "frames": self.frames}


class DigitAccuracy(Accuracy):
    """Whether the classifier reads the true pair of digits in the frame (Figure 5b)."""

    name, channels = "digit_accuracy", 1
    long_name = "share of frames whose pair of digits the classifier reads as the true pair"
    frames = "the saved uint8 frames (means clamped to [0, 1], rounded)"
    ceiling_name = ("share of true frames the classifier reads as the true pair: digit_accuracy of a perfect "
                    "prediction (a prediction can score above it at frames the classifier misreads)")

    def __init__(self, classifier: nn.Module):
        self.classifier = classifier

    @classmethod
    def load(cls, classifier: nn.Module | None, device: torch.device, say: Callable[[str], None] | None
             ) -> DigitAccuracy:
        return cls(classifier if classifier is not None else digit_classifier(str(device), say=say))

    def read(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        lead = frames.shape[:2]
        return read_pairs(self.classifier, frames.reshape(-1, *frames.shape[2:])).cpu().view(*lead, 2).numpy()

    def correct(self, readings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        labels = np.tile(labels, (len(readings) // len(labels), 1, 1))
        return same_pairs(torch.from_numpy(readings), torch.from_numpy(labels)).numpy()

    def labels(self, truth: np.ndarray, dataset: VideoDataset) -> tuple[np.ndarray, bool]:
        """The generator's digits where the dataset knows them (they stay all video), else the pair the
        classifier reads in the true frame."""
        if not hasattr(dataset, "test_labels"):
            return self.read(truth), False
        pairs = np.stack([dataset.test_labels(n) for n in range(len(truth))])
        return np.broadcast_to(pairs[:, None], (*truth.shape[:2], 2)), True

    def attrs(self, labels_known: bool) -> dict[str, str]:
        return {**super().attrs(labels_known), "labels": "the digits the generator drew" if labels_known else
                "the classifier's reading of the true frame at the same time"}


class RoomAccuracy(Accuracy):
    """Whether the category of the rooms visited up to the frame is the true video's (Figure 5a)."""

    name, channels = "room_accuracy", 3
    long_name = "share of videos whose room-sequence category up to this frame is the true one"
    frames = "the saved uint8 frames (means clamped to [0, 1], rounded), the context's reconstructions first"

    def read(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        return colour_histograms(torch.as_tensor(frames).cpu().numpy())

    def correct(self, readings: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return histogram_categories(readings) == np.tile(labels, (len(readings) // len(labels), 1))

    def labels(self, truth: np.ndarray, dataset: VideoDataset) -> tuple[np.ndarray, bool]:
        return histogram_categories(self.read(truth)), False

    def still(self, frame: np.ndarray, truth: np.ndarray, context: int) -> np.ndarray:
        """The true context first: it anchors the room the agent starts in."""
        shown = np.repeat(self.read(frame), truth.shape[1] - context, axis=1)
        return np.concatenate([self.read(truth[:, :context]), shown], axis=1)


ACCURACIES: dict[str, type[Accuracy]] = {"mmnist": DigitAccuracy, "gqn": RoomAccuracy}
"""The accuracy of each dataset that has one."""


def accuracy_for(dataset: str, channels: int, classifier: nn.Module | None, device: torch.device,
                 say: Callable[[str], None] | None) -> Accuracy | None:
    """The accuracy of ``dataset`` when its videos have the channels it reads, else None."""
    kind = ACCURACIES.get(dataset)
    return kind.load(classifier, device, say) if kind is not None and kind.channels == channels else None
