"""The generated Moving MNIST: the physics of the paper's recipe, determinism, and disjoint splits."""
import numpy as np
import pytest
from scipy import ndimage

from pyro_cwvae.data import generate, moving_mnist
from pyro_cwvae.data.moving_mnist import (DIGIT_SIZE, MAX_SPEED, MIN_SPEED, GeneratedMovingMNIST, render,
                                          split_digits, trajectories)

LIMIT = 64 - DIGIT_SIZE


@pytest.mark.parametrize("speed", [0.5, 1.0, 3.0])
def test_speeds_in_range_and_digits_inside_the_frame(speed):
    rng = np.random.default_rng(0)
    for _ in range(50):
        corners, velocity = trajectories(rng, 200, speed)
        magnitude = np.linalg.norm(velocity, axis=-1)
        assert np.all((magnitude >= MIN_SPEED * speed - 1e-9) & (magnitude <= MAX_SPEED * speed + 1e-9))
        assert corners.min() >= 0 and corners.max() <= LIMIT
        steps = np.abs(np.diff(corners, axis=0))
        # A coordinate moves by at most its speed per frame: reflection never adds distance.
        assert np.all(steps <= np.abs(velocity)[None] + 1e-9)


def test_digits_bounce_off_the_edges():
    rng = np.random.default_rng(1)
    corners, velocity = trajectories(rng, 500, 1.0, count=1)
    path = corners[:, 0, 0]
    direction = np.sign(np.diff(path))
    flips = np.nonzero(direction[1:] != direction[:-1])[0] + 1
    assert len(flips) >= 2, "a digit crossing the frame for 500 frames must bounce"
    for t in flips:  # the direction changes only at a wall, i.e. within one step of the edge
        assert min(path[t], LIMIT - path[t]) <= abs(velocity[0, 0]) + 1e-9
    speed_along = np.abs(np.diff(path))
    away_from_walls = (np.minimum(path[:-1], LIMIT - path[:-1]) > abs(velocity[0, 0])) & \
                      (np.minimum(path[1:], LIMIT - path[1:]) > abs(velocity[0, 0]))
    assert np.allclose(speed_along[away_from_walls], abs(velocity[0, 0]))


def test_render_places_digits_at_their_corners():
    digit = np.zeros((DIGIT_SIZE, DIGIT_SIZE), np.uint8)
    digit[0, 0] = 200
    frames = render(np.stack([digit, digit]), np.array([[[3.2, 7.0], [10.0, 20.6]]]))
    assert frames.shape == (1, 1, 64, 64)
    assert frames[0, 0, 3, 7] == 200 and frames[0, 0, 10, 21] == 200 and frames.sum() == 400


def test_overlapping_digits_show_the_brighter_pixel_whichever_comes_first():
    """The paper's frames are the pixel-wise maximum of the digits: where two overlap, neither covers the other."""
    dim, bright = np.full((DIGIT_SIZE, DIGIT_SIZE), 100, np.uint8), np.full((DIGIT_SIZE, DIGIT_SIZE), 200, np.uint8)
    at_dim, at_bright = [0.0, 0.0], [10.0, 14.0]
    for digits, corners in (([dim, bright], [at_dim, at_bright]), ([bright, dim], [at_bright, at_dim])):
        frame = render(np.stack(digits), np.array([corners]))[0, 0]
        assert (frame[10:28, 14:28] == 200).all()  # the overlap
        assert (frame[:10, :28] == 100).all() and (frame[28:38, 14:42] == 200).all()  # each alone
        assert (frame[38:] == 0).all() and (frame[:, 42:] == 0).all()


def test_batches_are_deterministic_per_seed_and_step():
    data = GeneratedMovingMNIST()
    a = data.train_batch(step=5, batch_size=3, seq_len=10, seed=0)
    assert a.shape == (3, 10, 1, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, data.train_batch(step=5, batch_size=3, seq_len=10, seed=0))
    assert not np.array_equal(a, data.train_batch(step=6, batch_size=3, seq_len=10, seed=0))
    assert not np.array_equal(a, data.train_batch(step=5, batch_size=3, seq_len=10, seed=1))
    assert np.array_equal(data.test_video(2), GeneratedMovingMNIST().test_video(2))
    assert data.test_video(0).shape == (1000, 1, 64, 64)


def ink_key(image: np.ndarray) -> tuple:
    """An image cropped to its ink, as a hashable key (the same digit drawn anywhere gives the same key)."""
    rows, cols = np.nonzero(image)
    crop = image[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return crop.shape, crop.tobytes()


def separate_digits(frame: np.ndarray) -> list[tuple]:
    """The ink keys of the 8-connected blobs of ``frame (64, 64)``: one per digit where the digits do not touch."""
    blobs, count = ndimage.label(frame > 0, structure=np.ones((3, 3), bool))
    return [ink_key(np.where(blobs == blob, frame, 0)) for blob in range(1, count + 1)]


def test_each_video_shows_two_distinct_training_digits():
    """Where the digits do not touch, a frame splits into two blobs that are two different whole MNIST images
    of the training split, and the same two throughout a video (not one digit, nor one digit twice)."""
    train = {ink_key(digit) for digit in split_digits("train")}
    videos = GeneratedMovingMNIST().train_batch(0, 4, 20, 0)[:, :, 0]
    for video in videos:
        assert np.all(video.reshape(len(video), -1).max(1) > 0)  # ink in every frame
        shown = set()
        for frame in video:
            blobs = separate_digits(frame)
            if len(blobs) == 2 and all(blob in train for blob in blobs):
                shown.update(blobs)
        # Two separate whole digits in some frame (about half the frames); only those two in the video.
        assert len(shown) == 2


def test_train_and_test_digits_are_disjoint_images():
    train, test = split_digits("train"), split_digits("test")
    assert len(train) == 4000 and len(test) == 1000
    train_keys = {d.tobytes() for d in train}
    assert not any(d.tobytes() in train_keys for d in test)


def centre_of_ink(videos: np.ndarray) -> np.ndarray:
    """The ink-weighted centre (y, x) of each frame of ``videos (B, T, 1, 64, 64)``: (B, T, 2)."""
    ink = videos[:, :, 0].astype(float)
    ys, xs = np.mgrid[:64, :64]
    total = ink.sum((-2, -1))
    return np.stack([(ink * ys).sum((-2, -1)) / total, (ink * xs).sum((-2, -1)) / total], -1)


@pytest.mark.parametrize("factor", [2, 3])
def test_speed_factor_scales_the_displacement_per_frame(factor):
    """The same seed draws the same digits and directions at every speed, so at ``factor`` times the speed the
    digits reach in one frame where they are ``factor`` frames later at speed 1 (bounces included)."""
    frames = 10
    slow = centre_of_ink(GeneratedMovingMNIST(speed=1.0).train_batch(0, 8, factor * frames, 0))
    fast = centre_of_ink(GeneratedMovingMNIST(speed=float(factor)).train_batch(0, 8, frames, 0))
    assert np.linalg.norm(np.diff(slow, axis=1), axis=-1).mean() > 1.0  # the digits do move at speed 1
    np.testing.assert_allclose(fast, slow[:, ::factor], atol=1.0)  # 1 px: positions are rounded to pixels
    # Away from bounces (the slow centre moves in a straight line over those frames) a frame at speed
    # ``factor`` moves the digits ``factor`` times as far as a frame at speed 1.
    start, one, end = slow[:, :-factor:factor], slow[:, 1::factor][:, : frames - 1], slow[:, factor::factor]
    straight = np.linalg.norm(end - start - factor * (one - start), axis=-1) < 1.0
    assert straight.sum() >= 10
    ratio = np.linalg.norm(np.diff(fast, axis=1), axis=-1) / np.linalg.norm(one - start, axis=-1)
    assert abs(np.median(ratio[straight]) - factor) < 0.1 * factor


def test_non_positive_speed_is_refused():
    with pytest.raises(ValueError):
        GeneratedMovingMNIST(speed=0)


def same_pool_for_both_splits(monkeypatch, module) -> None:
    """Give ``module``'s train and test splits the same digit images, so that videos differ only by their draws."""
    pool = moving_mnist.split_digits("train")[:50]
    monkeypatch.setattr(module, "split_digits", lambda split: pool)


def test_test_videos_are_not_drawn_like_any_training_video(monkeypatch):
    """Train and test draw from different random streams: with both splits given the same digit images, no test
    video repeats the first video of a training batch (with one stream for both, test video i would be batch i's)."""
    same_pool_for_both_splits(monkeypatch, moving_mnist)
    data = GeneratedMovingMNIST(num_test=6, test_length=12)
    train = [data.train_batch(step, 1, 12, seed=0)[0] for step in range(6)]
    for index in range(6):
        assert not any(np.array_equal(data.test_video(index), video) for video in train), index


@pytest.fixture
def written(monkeypatch):
    """``data generate``'s videos as arrays, by split, instead of encoded: exactly what it draws."""
    videos = {"train": [], "test": []}

    def write_one(file, video, codec):
        videos["test" if "test" in file.parent.name else "train"].append(video)

    monkeypatch.setattr(generate, "write_one", write_one)
    return videos


def test_generated_folders_draw_training_videos_from_training_digits_only(tmp_path, written):
    generate.generate_moving_mnist(tmp_path, num_train=4, num_test=4, train_length=20, test_length=20, seed=0)
    keys = {split: {ink_key(digit) for digit in split_digits(split)} for split in ("train", "test")}
    for split, other in (("train", "test"), ("test", "train")):
        shown = set()
        for video in written[split]:
            for frame in video[:, 0]:
                shown.update(blob for blob in separate_digits(frame) if blob in keys[split] | keys[other])
        assert len(shown) >= 4 and shown <= keys[split], split  # whole separate digits, all of their own split


def test_generated_training_videos_are_not_drawn_like_the_test_videos(tmp_path, written, monkeypatch):
    """With both splits given the same digit images, no training video of a generated folder repeats a test video's
    draws (with one random stream for both, training video i would be test video i)."""
    same_pool_for_both_splits(monkeypatch, generate)
    generate.generate_moving_mnist(tmp_path, num_train=4, num_test=4, train_length=12, test_length=12, seed=0)
    assert len(written["train"]) == len(written["test"]) == 4
    for video in written["train"]:
        assert not any(np.array_equal(video, test) for test in written["test"])
