"""The time axis of rollouts and evaluations, and how to read it. Apart from the modules that compute a rollout (they
import torch), so that drawing a file (``plot``) does not wait for torch."""
from __future__ import annotations

import numpy as np
import xarray as xr


def is_context(frames: int, context: int) -> np.ndarray:
    """Which of ``frames`` frames, counted from the first context frame, the guide was given."""
    return np.arange(frames) < context


def frames_ahead(ds: xr.Dataset) -> np.ndarray:
    """For each frame on the time axis of a whole rollout or evaluation, how many frames after the context it is:
    1 for the first predicted frame, 0 or less for the context's. The one reading of "frames predicted" that
    figures and tables use; ``time`` itself counts from the first context frame (``TIME_ATTRS``)."""
    return ds.time.values - int(ds.is_context.sum()) + 1


TIME_ATTRS = {"units": "frames", "long_name": "frames since the first context frame"}
"""The time axis of rollouts and evaluations."""
