"""Room-sequence categories of GQN-Mazes-like videos, on synthetic videos of textured places in distinct colours."""
import numpy as np
import pytest

from pyro_cwvae.evaluation.accuracy import RoomAccuracy
from pyro_cwvae.evaluation.rooms import (MIN_FRAMES, colour_histograms, histogram_categories, room_categories,
                                         segment_places, total_variation)

SIZE = 64
CEILING = 8  # rows of one grey shared by every place, as a sky or ceiling would be
# Wall and floor colours of each place, at the centres of the 4-level bins so that texture noise stays in its bin.
PALETTES = {
    "A": [(224, 32, 32), (160, 32, 32), (224, 224, 32), (224, 160, 32)],
    "B": [(32, 224, 32), (32, 160, 96), (32, 224, 224), (96, 160, 224)],
    "H": [(32, 32, 224), (96, 32, 160), (160, 96, 224), (224, 96, 160)],
}


def texture(rng, palette, shape):
    """A noisy two-colour texture ``(3, *shape)``: the colours picked per 4x4 block, +-16 per pixel."""
    blocks = rng.integers(0, 2, size=(shape[0] // 4 + 1, shape[1] // 4 + 1))
    pick = np.kron(blocks, np.ones((4, 4), dtype=np.int64))[: shape[0], : shape[1]]
    colours = np.asarray(palette, dtype=np.float64)[pick].transpose(2, 0, 1)
    return colours + rng.uniform(-16, 16, size=colours.shape)


def view(rng, place, t):
    """One frame inside ``place``: ceiling, wall above a horizon that moves with the camera, floor below."""
    horizon = int(30 + 12 * np.sin(t / 9.0))
    palette = PALETTES[place]
    frame = np.empty((3, SIZE, SIZE))
    frame[:, :CEILING] = 128.0
    frame[:, CEILING:horizon] = texture(rng, palette[:2], (horizon - CEILING, SIZE))
    frame[:, horizon:] = texture(rng, palette[2:], (SIZE - horizon, SIZE))
    return frame


def video(schedule, seed=0, sweep=10):
    """uint8 ``(T, 3, 64, 64)``: the places of ``schedule`` [(place, frames), ...] in turn; between two places a
    doorway sweeps across the view for ``sweep`` frames (the columns left of it already show the next place)."""
    rng = np.random.default_rng(seed)
    frames, t = [], 0
    for i, (place, length) in enumerate(schedule):
        for _ in range(length):
            frames.append(view(rng, place, t))
            t += 1
        if i + 1 < len(schedule):
            following = schedule[i + 1][0]
            for edge in np.linspace(0, SIZE, sweep, endpoint=False).astype(int):
                frame = view(rng, place, t)
                frame[:, :, :edge] = view(rng, following, t)[:, :, :edge]
                frames.append(frame)
                t += 1
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


SCHEDULES = {
    "stays in the room": ([("A", 120)], 1),
    "into the hallway and stays": ([("A", 50), ("H", 70)], 2),
    "through the hallway into the other room": ([("A", 40), ("H", 40), ("B", 40)], 3),
    "through the hallway back into the same room": ([("A", 40), ("H", 40), ("A", 40)], 3),
    "room, hallway, room, hallway": ([("A", 30), ("H", 30), ("B", 30), ("H", 30)], 3),
}


def test_histograms_match_numpy_histogramdd_and_sum_to_one():
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 3, 3, 16, 16), dtype=np.uint8)
    histograms = colour_histograms(frames, bins=4)
    assert histograms.shape == (2, 3, 64)
    edges = [np.arange(0, 257, 64)] * 3
    for index in np.ndindex(2, 3):
        pixels = frames[index].reshape(3, -1).T
        reference, _ = np.histogramdd(pixels, bins=edges)
        np.testing.assert_allclose(histograms[index], reference.ravel() / len(pixels))


def test_float_frames_read_as_their_uint8_levels():
    frames = np.random.default_rng(1).integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(colour_histograms(frames / 255.0), colour_histograms(frames))


def test_histograms_need_rgb_frames():
    with pytest.raises(ValueError, match="RGB"):
        colour_histograms(np.zeros((5, 1, 64, 64), np.uint8))


def test_places_of_distinct_textures_are_far_apart_and_views_of_one_place_close():
    a, a_later, h = colour_histograms(np.stack([view(np.random.default_rng(0), p, t) for p, t in
                                                [("A", 0), ("A", 14), ("H", 0)]]).astype(np.uint8))
    assert total_variation(a, a_later) < 0.3 < 0.8 < total_variation(a, h)


@pytest.mark.parametrize("name", SCHEDULES)
def test_category_of_each_kind_of_video(name):
    schedule, category = SCHEDULES[name]
    assert room_categories(video(schedule))[-1] == category


def test_places_are_numbered_in_order_and_a_return_reuses_the_place():
    places = segment_places(colour_histograms(video([("A", 40), ("H", 40), ("A", 40)])))
    runs = places[np.concatenate([[True], places[1:] != places[:-1]])]
    assert runs.tolist() == [0, 1, 0]


def test_a_glimpse_shorter_than_min_frames_is_no_visit():
    glimpse = video([("A", 60), ("H", MIN_FRAMES - 3), ("A", 60)], sweep=1)
    assert room_categories(glimpse)[-1] == 1
    longer = video([("A", 60), ("H", MIN_FRAMES + 3), ("A", 60)], sweep=1)
    assert room_categories(longer)[-1] == 3


@pytest.mark.parametrize("fade", [20, 40])
def test_a_cross_fade_between_textures_is_no_place_of_its_own(fade):
    rng = np.random.default_rng(4)
    weights = np.arange(1, fade + 1) / (fade + 1)
    fading = [(1 - w) * view(rng, "A", 40 + i) + w * view(rng, "H", 40 + i) for i, w in enumerate(weights)]
    frames = np.concatenate([video([("A", 40)]), np.rint(fading).astype(np.uint8), video([("H", 40)], seed=5)])
    assert room_categories(frames)[-1] == 2


def test_categories_survive_noise_and_blur():
    clean = video([("A", 40), ("H", 40), ("B", 40)]).astype(np.float64)
    rng = np.random.default_rng(3)
    noisy = clean + rng.normal(0, 12, size=clean.shape)
    blurred = sum(np.roll(clean, (dy, dx), axis=(-2, -1)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)) / 9
    for frames in (noisy, blurred):
        assert room_categories(np.clip(frames, 0, 255) / 255.0)[-1] == 3


def test_category_at_each_frame_is_that_of_the_video_cut_there():
    frames = video([("A", 30), ("H", 30), ("B", 30)], sweep=6)
    over_time = room_categories(frames)
    for t in (0, 20, 35, 45, 70, 75, len(frames) - 1):
        assert over_time[t] == room_categories(frames[: t + 1])[-1]
    assert over_time[0] == 1 and np.all(np.diff(over_time) >= 0) and set(over_time) == {1, 2, 3}


def test_categories_from_histograms_gathered_in_chunks_match_those_of_the_frames():
    videos = np.stack([video([("A", 30), ("H", 30)]), video([("A", 30), ("H", 30)], seed=1)[::-1]])
    histograms = np.concatenate([colour_histograms(videos[:, :25]), colour_histograms(videos[:, 25:])], axis=1)
    categories = histogram_categories(histograms)
    np.testing.assert_array_equal(categories, room_categories(videos))
    assert categories.shape == (2, len(videos[0])) and categories[:, -1].tolist() == [2, 2]


def test_accuracy_per_sample_and_frame_against_the_truth_of_its_sequence():
    truth = video([("A", 40), ("H", 40), ("B", 40)], seed=0)
    right = video([("A", 40), ("H", 40), ("B", 40)], seed=1)  # same rooms, other texture noise
    stuck = video([("A", 140)], seed=2)
    accuracy = RoomAccuracy()
    labels, known = accuracy.labels(truth[None], dataset=None)
    correct = accuracy.correct(accuracy.read(np.stack([right, stuck])), labels)  # two samples of one sequence
    assert not known and labels.tolist() == [room_categories(truth).tolist()]
    assert correct.shape == (2, len(truth)) and correct.dtype == bool
    assert correct[0].all()
    assert correct[1, :40].all() and not correct[1, -1]
    assert correct[:, -1].mean() == 0.5


def test_accuracy_pairs_each_samples_row_with_its_own_sequence():
    """Rows of the readings are sample-major (sample 0's sequences, then sample 1's), as the rollouts are: with two
    sequences of different categories, predictions equal to their own truth are right at every frame."""
    truths = np.stack([video([("A", 70)], seed=0), video([("A", 20), ("H", 40)], seed=1)])
    accuracy = RoomAccuracy()
    labels, _ = accuracy.labels(truths, dataset=None)
    assert labels[0, -1] == 1 and labels[1, -1] == 2  # the two sequences differ
    predictions = np.stack([video([("A", 70)], seed=2), video([("A", 20), ("H", 40)], seed=3)] * 2)
    assert accuracy.correct(accuracy.read(predictions), labels).all()


def test_the_still_baseline_starts_from_the_true_context():
    """A still frame of another room after 10 context frames in room A: the agent is in A, then, after MIN_FRAMES
    frames of the other room in a row, has moved; the truth stays in A. Right up to frame 10 + MIN_FRAMES - 2."""
    truth = video([("A", 40)], seed=0)[None]
    elsewhere = video([("B", 1)], seed=1)[None]
    accuracy = RoomAccuracy()
    labels, _ = accuracy.labels(truth, dataset=None)
    correct = accuracy.correct(accuracy.still(elsewhere, truth, context=10), labels)[0]
    moved = 10 + MIN_FRAMES - 1
    assert correct[:moved].all() and not correct[moved:].any(), correct.astype(int)
