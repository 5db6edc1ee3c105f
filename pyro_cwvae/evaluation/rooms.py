"""The sequence of rooms in a GQN Mazes video, read from colour histograms (the paper's Section 3.4, Figure 5a).

A GQN maze has two rooms joined by a hallway, each with its own randomized wall and floor textures. The paper
sorts a video into three categories: 1) the agent stays in the room it starts in, 2) it goes into the hallway but
does not get into a room again, 3) it goes through the hallway into a room (the other one, or back). It scores a
prediction as correct when its category equals the category of the true video over the same frames.

How a category is read here (the paper gives no procedure, only "via the colour histogram"):

1. Each frame becomes a colour histogram: every channel quantised to ``bins`` levels, ``bins**3`` colours,
   normalised to sum to 1 (:func:`colour_histograms`).
2. The frames are split into *places* by a causal leader clustering (:func:`segment_places`): a frame belongs
   to the nearest place seen so far when its total-variation distance to that place's mean histogram is at most
   ``threshold``, else to a new place. The agent is only said to move when ``min_frames`` frames in a row agree
   on another place, so a glimpse through a doorway or a few odd frames are not a visit; a new place must also
   hold still (:data:`SETTLED`), so a cross-fade between two textures is no place of its own.
3. Consecutive places alternate between a room and the hallway, since the rooms only connect through the
   hallway. With the first place a room, the number of places visited in order decides the category:
   one place: 1; two: 2 (room, hallway); three or more: 3 (room, hallway, room) (:func:`room_categories`, or
   :func:`histogram_categories` from histograms gathered a chunk of frames at a time).

Limits, stated honestly: no labelled GQN Mazes video was at hand, so the defaults (4 levels per channel, a
threshold of 0.5, 8 frames, settled within 0.25) are tuned on synthetic videos of textured regions in distinct
colours (tests/test_rooms.py), not on the real data. There, doorway sweeps, pixel noise and a 3x3 blur are read
right, and so is a cross-fade from one texture to another over up to about 40 frames; a slower fade reads as an
extra place (one category too high). The method never looks at which texture is the hallway: a video that starts
in the hallway is read one category too high, and two places with similar colour palettes (a distance under
``threshold``) are one place to it. Check the thresholds on a few real videos before trusting the numbers.
"""
from __future__ import annotations

import numpy as np

BINS = 4  # quantisation levels per colour channel: 64 colours, coarse enough that blur and noise stay in their bin
THRESHOLD = 0.5
"""Total-variation distance above which a frame shows another place (0: same histogram, 1: no colour shared)."""
MIN_FRAMES = 8  # frames in a row that must agree on another place before the agent is said to have moved there
SETTLED = 0.25
"""A new place's first ``MIN_FRAMES`` frames must each lie within this distance of the first of them: frames that
cross-fade from one texture to another (as blurred predictions do) keep drifting and never make a place."""
CATEGORIES = (1, 2, 3)
"""1: stays in the room; 2: into the hallway but into no room again; 3: through the hallway into a room."""


def colour_histograms(frames: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Normalised colour histograms ``(..., bins**3)`` of RGB frames ``(..., 3, H, W)``.
    ``frames`` are uint8, or floats in [0, 1] (rounded to uint8 levels first). Colour index
    ``(r * bins + g) * bins + b`` with each channel quantised as ``value * bins // 256``."""
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)
    if frames.ndim < 3 or frames.shape[-3] != 3:
        raise ValueError(f"expected RGB frames (..., 3, H, W), got shape {frames.shape}")
    levels = frames.astype(np.int64) * bins // 256
    codes = (levels[..., 0, :, :] * bins + levels[..., 1, :, :]) * bins + levels[..., 2, :, :]
    flat = codes.reshape(-1, codes.shape[-2] * codes.shape[-1])
    offsets = np.arange(len(flat))[:, None] * bins**3  # one bincount for all frames
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * bins**3)
    return (counts.reshape(len(flat), bins**3) / flat.shape[1]).reshape(*frames.shape[:-3], bins**3)


def total_variation(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance ``0.5 * sum |p - q|`` between histograms, over the last axis."""
    return 0.5 * np.abs(p - q).sum(axis=-1)


def segment_places(histograms: np.ndarray, threshold: float = THRESHOLD, min_frames: int = MIN_FRAMES) -> np.ndarray:
    """The place the agent is in at each frame, ``(T,)`` ints numbered in order of first visit, from ``(T, K)``.
    Causal: the answer at frame t depends on frames 0..t only, so a move is recognised ``min_frames - 1`` frames
    after it happens. Each place keeps the mean histogram of the frames it holds (views of one room differ in
    their wall-to-floor proportions, and the mean follows them)."""
    if min_frames < 1:
        raise ValueError(f"min_frames must be at least 1, got {min_frames}")
    sums, counts = [histograms[0].astype(np.float64)], [1]
    current, candidate, run = 0, None, []
    places = np.zeros(len(histograms), dtype=np.int64)
    for t in range(1, len(histograms)):
        h = histograms[t]
        target = _nearest_place(h, sums, counts, threshold)
        if target == current:
            sums[current] += h
            counts[current] += 1
            candidate, run = None, []
        else:
            if not run or not _same_candidate(target, candidate, h, run):
                candidate, run = target, []
            run.append(h)
            if len(run) >= min_frames:
                current = _enter(candidate, run, sums, counts)
                candidate, run = None, []
        places[t] = current
    return places


def _nearest_place(h: np.ndarray, sums: list, counts: list, threshold: float) -> int | None:
    """Index of the known place nearest to histogram ``h``, or None when none is within ``threshold``."""
    distances = [total_variation(h, s / n) for s, n in zip(sums, counts)]
    nearest = int(np.argmin(distances))
    return nearest if distances[nearest] <= threshold else None


def _same_candidate(target: int | None, candidate: int | None, h: np.ndarray, run: list) -> bool:
    """Whether frame ``h`` continues the run of frames that point away from the current place."""
    if target is not None or candidate is not None:
        return target == candidate
    return total_variation(h, run[0]) <= SETTLED  # frames of an unknown place must show one settled place


def _enter(candidate: int | None, run: list, sums: list, counts: list) -> int:
    """Move into place ``candidate`` (a new place when None) with the frames of ``run``; its index."""
    if candidate is None:
        sums.append(np.zeros_like(sums[0]))
        counts.append(0)
        candidate = len(sums) - 1
    sums[candidate] += np.sum(run, axis=0)
    counts[candidate] += len(run)
    return candidate


def room_categories(frames: np.ndarray, threshold: float = THRESHOLD, min_frames: int = MIN_FRAMES,
                    bins: int = BINS) -> np.ndarray:
    """The category (1, 2 or 3) of frames 0..t of each video, at every t: ints ``(..., T)`` from ``(..., T, 3, H, W)``.
    The last entry is the category of the whole video; entry t equals the category of the video cut after
    frame t (the segmentation is causal), which gives accuracy against the horizon."""
    return histogram_categories(colour_histograms(frames, bins), threshold, min_frames)


def histogram_categories(histograms: np.ndarray, threshold: float = THRESHOLD,
                         min_frames: int = MIN_FRAMES) -> np.ndarray:
    """:func:`room_categories` from the frames' colour histograms ``(..., T, K)`` (e.g. gathered a chunk at a time)."""
    flat = histograms.reshape(-1, *histograms.shape[-2:])
    categories = np.stack([_visits(segment_places(h, threshold, min_frames)) for h in flat])
    return np.minimum(categories, CATEGORIES[-1]).reshape(histograms.shape[:-1])


def _visits(places: np.ndarray) -> np.ndarray:
    """Places visited so far, in order and counting returns: 1 + the number of moves up to each frame."""
    moves = np.concatenate([[0], places[1:] != places[:-1]])
    return 1 + np.cumsum(moves)
