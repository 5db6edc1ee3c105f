"""The images of a preview: a strip (for each video, the truth above the model's frames: reconstructions of the
context, a gap, then open-loop predictions) and an animated GIF of the same, as TensorBoard shows them."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pyro_cwvae.plots.rollout import GIF_FRAME_MS, display_frames, evenly_spaced, tile_frames, to_hwc

STRIP_CONTEXT = 6  # context frames in the strip, evenly spaced, the last one included
STRIP_PREDICTED = 18  # predicted frames in the strip, evenly spaced
CONTEXT_GAP = 12  # pixels of white between the context's columns and the predictions'


def preview_strip(truth: np.ndarray, frames: np.ndarray, context: int) -> np.ndarray:
    """uint8 (H, W, C): per video (N, T, C, 64, 64), a row of true frames above a row of the model's, at a few
    context times, then (past a wider gap) more predicted ones; a wider gap also sets each video apart."""
    parts = []
    for times in (evenly_spaced(context, STRIP_CONTEXT), context + evenly_spaced(truth.shape[1] - context,
                                                                                   STRIP_PREDICTED)):
        rows = []
        for true, model in zip(to_hwc(truth[:, times]), to_hwc(frames[:, times])):
            rows += [true, model]
        parts.append(tile_frames(rows, group=2)[0])
    gap = np.full((parts[0].shape[0], CONTEXT_GAP, parts[0].shape[2]), 255, dtype=np.uint8)
    return np.concatenate([parts[0], gap, parts[1]], axis=1)


def preview_video(truth: np.ndarray, frames: np.ndarray, context: int) -> bytes:
    """An animated GIF, one image per time: the videos in rows, the truth beside the model's frame, with a bar under
    the model's column while it still sees the context."""
    images = []
    for t in range(truth.shape[1]):
        rows = [np.stack([true, model]) for true, model in zip(to_hwc(truth[:, t]), to_hwc(frames[:, t]))]
        tiled, _, _ = tile_frames(rows, group=1)
        band = np.full((4, *tiled.shape[1:]), 255, dtype=np.uint8)
        if t < context:  # a dark bar under the model's column: it is filtering, not predicting
            band[:, tiled.shape[1] // 2:] = 0
        images.append(Image.fromarray(display_frames(np.concatenate([tiled, band]))))
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=GIF_FRAME_MS, loop=0)
    return buffer.getvalue()
