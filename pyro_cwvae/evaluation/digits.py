"""Which two digits a Moving MNIST frame shows: the digit-identity accuracy of the paper's Figure 5b.

A small CNN reads one 64x64 frame and scores, for each digit class, whether the frame holds 0, 1 or 2 of it
(10 x 3 logits). The unordered pair is decoded as the one of the 55 pairs (doubles included) whose counts score
highest, so a frame of two 7s is read as (7, 7) and not as a 7 and a runner-up. It is trained on frames drawn by
the generator from the training split's digit images (labels known, positions and overlaps as in the videos),
half of them blurred as predictions are, and measured on frames of the test videos, whose digit images it never
saw. Counting per class learns faster than one softmax over the 55 pairs: 0.49 against 0.17 pair accuracy after
300 steps, 0.87 against 0.84 after 1500 (sharp frames, same network).

The weights cache (``sources.cache_dir``) holds the trained state dict ``digit-classifier.pt`` beside its
``Record``, ``digit-classifier.json`` (digit_record.py); ``pyro-cwvae classifier train`` writes them, or the first use.

For the public archive (moving_mnist_2digit.zip, which ships no labels) the label of a test video is the
classifier's reading of its true frame at the same time: the accuracy then says how often a prediction reads as
the truth reads, and the accuracy on ground-truth frames is 1 by construction.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from pyro_cwvae.data import batch_rng
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST, labelled_frames, split_digits, split_labels
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.digit_record import (BATCH_SIZE, SEED, STEPS, TEST_VIDEOS, Record, classifier_path,
                                                read_record)
from pyro_cwvae.evaluation.weights import sha256
from pyro_cwvae.files.atomic import atomic_path, write_text
from pyro_cwvae.files.reading import first_line, regular_file

NUM_CLASSES = 10
MAX_COUNT = 2  # a frame holds a class 0, 1 or 2 times
PAIRS = torch.tensor([(a, b) for a in range(NUM_CLASSES) for b in range(a, NUM_CLASSES)])
"""The 55 unordered pairs ``(a, b)``, ``a <= b``."""
LR = 2e-3
BLUR_SHARE, MIN_BLUR, MAX_BLUR, BLUR_RADIUS = 0.5, 0.5, 2.0, 4
"""Half the training frames are blurred (Gaussian std 0.5-2 pixels), as predicted frames are. Measured on the
ground-truth test frames blurred by 1.5 pixels: 0.28 pair accuracy when trained on sharp frames only, 0.79 with
this (0.87 and 0.84 on sharp frames)."""
TEST_FRAMES_EVERY, TEST_LENGTH = 10, 100
MAX_CLASSIFIER_BYTES = 64 << 20  # the weights are 2.4 MB
TRAIN_STREAM = 7  # the random stream of the classifier's training frames, apart from the video streams of the same seed


class DigitClassifier(nn.Module):
    """Scores ``(B, 10, 3)`` of each digit class appearing 0, 1 or 2 times in frames ``(B, 1, 64, 64)`` in [0, 1].
    Four 3x3 conv blocks (batch norm, ReLU, 2x2 max pooling) halve the frame to 4x4 while the channels grow
    16 -> 128, then a 256-unit hidden layer: about 0.6 M weights, ~15 M multiply-adds a frame."""

    def __init__(self, width: int = 16, hidden: int = 256):
        super().__init__()
        channels = [1, width, 2 * width, 4 * width, 8 * width]
        blocks = [layer for c_in, c_out in zip(channels, channels[1:]) for layer in conv_block(c_in, c_out)]
        self.features = nn.Sequential(*blocks, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(channels[-1] * 4 * 4, hidden), nn.ReLU(),
                                  nn.Linear(hidden, NUM_CLASSES * (MAX_COUNT + 1)))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(frames)).view(-1, NUM_CLASSES, MAX_COUNT + 1)


def conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    """3x3 convolution (no bias: batch norm follows), batch norm, ReLU, and 2x2 max pooling."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]


def count_targets(labels: torch.Tensor) -> torch.Tensor:
    """How often each class occurs in each pair: ``(..., 10)`` counts from labels ``(..., 2)``."""
    return F.one_hot(labels.long(), NUM_CLASSES).sum(-2)


def pair_log_probs(scores: torch.Tensor) -> torch.Tensor:
    """Log-probability ``(B, 55)`` of each pair of :data:`PAIRS`, the classes' counts taken as independent."""
    log_p = scores.log_softmax(-1)  # (B, 10, 3)
    counts = F.one_hot(count_targets(PAIRS).to(scores.device), MAX_COUNT + 1).to(scores.dtype)  # (55, 10, 3)
    return torch.einsum("pcn,bcn->bp", counts, log_p)


def decode_pairs(scores: torch.Tensor) -> torch.Tensor:
    """The most probable unordered pair ``(B, 2)`` (ascending) for each frame's scores ``(B, 10, 3)``."""
    return PAIRS.to(scores.device)[pair_log_probs(scores).argmax(-1)]


def loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true count of every class, averaged over classes and frames."""
    return F.cross_entropy(scores.transpose(1, 2), count_targets(labels))


def as_input(frames: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """Frames ``(B, 1, 64, 64)``, uint8 or floats in [0, 1], as a float tensor in [0, 1] on ``device``."""
    frames = torch.as_tensor(frames).to(device)
    return frames.float().div_(255) if frames.dtype == torch.uint8 else frames.float()


def gaussian_blur(frames: torch.Tensor, sigma: torch.Tensor, radius: int = BLUR_RADIUS) -> torch.Tensor:
    """Frames ``(B, 1, H, W)`` each blurred by a Gaussian of std ``sigma[b]`` pixels (0: unchanged), zero-padded.
    The kernel is truncated at ``radius`` pixels and normalised, as ``scipy.ndimage.gaussian_filter`` does."""
    B = len(frames)
    offsets = torch.arange(-radius, radius + 1, dtype=frames.dtype)
    kernel = torch.exp(-offsets.square() / (2 * sigma.to(frames.dtype).clamp_min(1e-3)[:, None].square()))
    kernel = kernel / kernel.sum(-1, keepdim=True)  # (B, 2 * radius + 1)
    x = frames.reshape(1, B, *frames.shape[-2:])  # one group per frame: a kernel of its own
    x = F.conv2d(x, kernel.view(B, 1, 1, -1), padding=(0, radius), groups=B)
    x = F.conv2d(x, kernel.view(B, 1, -1, 1), padding=(radius, 0), groups=B)
    return x.view_as(frames)


def blur_some(frames: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random :data:`BLUR_SHARE` of the frames blurred by a random std in [MIN_BLUR, MAX_BLUR]."""
    blurred = rng.random(len(frames)) < BLUR_SHARE
    sigma = np.where(blurred, rng.uniform(MIN_BLUR, MAX_BLUR, size=len(frames)), 0.0)
    return gaussian_blur(frames, torch.from_numpy(sigma))


def train(steps: int = STEPS, batch_size: int = BATCH_SIZE, lr: float = LR, seed: int = SEED,
          progress: bool = False) -> tuple[DigitClassifier, list[float]]:
    """Train a classifier on fresh generator frames of the training digits; the network and its loss per step.
    Batch ``i`` is a pure function of ``(seed, i)``, half of it blurred (:func:`blur_some`); AdamW with a one-cycle
    schedule (warm-up, then cosine decay)."""
    torch.manual_seed(seed)
    net = DigitClassifier()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    digits, labels = split_digits("train"), split_labels("train")
    losses = []
    net.train()
    for step in tqdm(range(steps), desc="digit classifier", unit="step", disable=not progress):
        rng = batch_rng(seed, step, stream=TRAIN_STREAM)
        frames, pairs = labelled_frames(rng, digits, labels, batch_size)
        value = loss(net(blur_some(as_input(frames), rng)), torch.from_numpy(pairs))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        schedule.step()
        losses.append(value.item())
    return net.eval(), losses


def test_set(videos: int = TEST_VIDEOS, every: int = TEST_FRAMES_EVERY,
             length: int = TEST_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth test frames: every ``every``-th of the first ``length`` frames of the first ``videos`` generated
    test videos (seed 0, the digits the classifier never saw), uint8 ``(N, 1, 64, 64)``, and their labels ``(N, 2)``."""
    data = GeneratedMovingMNIST(num_test=videos, test_length=length)
    frames = np.concatenate([data.test_video(i)[::every] for i in range(videos)])
    labels = np.repeat(np.stack([data.test_labels(i) for i in range(videos)]), len(range(0, length, every)), axis=0)
    return frames, labels


@torch.no_grad()
def read_pairs(net: DigitClassifier, frames: np.ndarray | torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """The pair ``(N, 2)`` the classifier reads in each frame ``(N, 1, 64, 64)``, on the classifier's device."""
    device = next(net.parameters()).device
    return torch.cat([decode_pairs(net(as_input(frames[i : i + chunk], device))) for i in range(0, len(frames), chunk)])


def same_pairs(read: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether unordered pairs ``(..., 2)`` are equal, elementwise over the leading axes."""
    return (read.sort(-1).values == labels.sort(-1).values).all(-1)


def evaluate(net: DigitClassifier, frames: np.ndarray, labels: np.ndarray) -> tuple[float, dict[str, float]]:
    """Pair accuracy on ``frames``, and per class the share of its occurrences that the read pair contains."""
    read = read_pairs(net, frames).cpu()
    labels = torch.from_numpy(labels)
    pair_accuracy = same_pairs(read, labels).float().mean().item()
    found = torch.minimum(count_targets(read), count_targets(labels)).sum(0)
    present = count_targets(labels).sum(0)
    per_digit = {str(c): round(found[c].item() / present[c].item(), 4) for c in range(NUM_CLASSES) if present[c]}
    return pair_accuracy, per_digit


def train_and_save(steps: int = STEPS, batch_size: int = BATCH_SIZE, seed: int = SEED, progress: bool = False,
                   path: Path | None = None, test_videos: int = TEST_VIDEOS) -> Record:
    """Train, measure on ground-truth frames of ``test_videos`` test videos, and write the weights and their record
    to the cache."""
    path = path or classifier_path()
    start = time.perf_counter()
    net, _ = train(steps, batch_size, seed=seed, progress=progress)
    seconds = time.perf_counter() - start
    frames, labels = test_set(test_videos)
    pair_accuracy, per_digit = evaluate(net, frames, labels)
    with atomic_path(path) as tmp:
        torch.save(net.state_dict(), tmp)
    record = Record(sha256(path), steps, batch_size, seed, round(pair_accuracy, 4), per_digit, len(frames),
                    round(seconds, 1), torch=torch.__version__)
    write_text(path.with_suffix(".json"), json.dumps(asdict(record), indent=1) + "\n")  # last: the validity mark
    load.cache_clear()
    return record


@lru_cache(maxsize=4)
def load(path: Path, device: str = "cpu") -> DigitClassifier:
    """The cached classifier at ``path``, verified against its recorded SHA-256, in eval mode on ``device``."""
    record = read_record(path)
    if record is None:
        raise UserError(f"no digit classifier at {path}: run `pyro-cwvae classifier train`")
    if sha256(regular_file(path, MAX_CLASSIFIER_BYTES, "digit classifier")) != record.sha256:
        raise UserError(f"{path} does not match its recorded SHA-256 (damaged or changed): run "
                        f"`pyro-cwvae classifier train --force`")
    net = DigitClassifier()
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as error:  # a tampered file can fail in many ways: name it, in one line
        raise UserError(f"cannot load the digit classifier {path}: {first_line(error)}; run `pyro-cwvae classifier "
                        f"train --force`") from None
    return net.to(device).eval()


def digit_classifier(device: str = "cpu", say: Callable[[str], None] | None = print) -> DigitClassifier:
    """The cached digit classifier, trained first (a few minutes on a CPU) when the cache has none."""
    path = classifier_path()
    if read_record(path) is None:
        if say is not None:
            say(f"training the digit classifier once ({STEPS} steps, a few minutes on a CPU) into {path}")
        train_and_save(progress=say is not None, path=path)
    return load(path, str(device))


def digit_pair_accuracy(frames: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                        net: DigitClassifier | None = None) -> np.ndarray:
    """Whether each frame shows its true pair of digits: bool ``(...)`` from frames ``(..., 1, 64, 64)``.
    Frames are uint8 or floats in [0, 1] (e.g. predictions with sample, sequence and time axes); ``labels``
    ``(..., 2)`` broadcast to the frames' leading axes (e.g. ``(sequence, 1, 2)`` for every frame of a sequence).
    Average over samples and sequences for the accuracy against the horizon. ``net`` defaults to
    :func:`digit_classifier`."""
    net = net or digit_classifier()
    frames = torch.as_tensor(frames)
    lead = frames.shape[:-3]
    read = read_pairs(net, frames.reshape(-1, *frames.shape[-3:])).cpu().view(*lead, 2)
    labels = torch.as_tensor(labels).cpu().broadcast_to(*lead, 2)
    return same_pairs(read, labels).numpy()
