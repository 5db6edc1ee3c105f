"""The generated Moving MNIST: the physics of the paper's recipe, determinism, and disjoint splits."""
import numpy as np
import pytest

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


def test_batches_are_deterministic_per_seed_and_step():
    data = GeneratedMovingMNIST()
    a = data.train_batch(step=5, batch_size=3, seq_len=10, seed=0)
    assert a.shape == (3, 10, 1, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, data.train_batch(step=5, batch_size=3, seq_len=10, seed=0))
    assert not np.array_equal(a, data.train_batch(step=6, batch_size=3, seq_len=10, seed=0))
    assert not np.array_equal(a, data.train_batch(step=5, batch_size=3, seq_len=10, seed=1))
    assert np.array_equal(data.test_video(2), GeneratedMovingMNIST().test_video(2))
    assert data.test_video(0).shape == (1000, 1, 64, 64)


def test_each_frame_shows_two_digits_worth_of_ink():
    video = GeneratedMovingMNIST().train_batch(0, 4, 20, 0).astype(float)
    ink = video.sum(axis=(2, 3, 4))
    assert np.all(ink > 0)


def test_train_and_test_digits_are_disjoint_images():
    train, test = split_digits("train"), split_digits("test")
    assert len(train) == 4000 and len(test) == 1000
    train_keys = {d.tobytes() for d in train}
    assert not any(d.tobytes() in train_keys for d in test)


def test_speed_factor_scales_motion():
    slow = GeneratedMovingMNIST(speed=0.5).train_batch(0, 1, 2, 0)
    fast = GeneratedMovingMNIST(speed=2.0).train_batch(0, 1, 2, 0)
    assert not np.array_equal(slow, fast)
    with pytest.raises(ValueError):
        GeneratedMovingMNIST(speed=0)
