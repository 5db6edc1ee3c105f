"""The cached digit classifier's record (digits.py trains and reads the classifier): ``digit-classifier.json``
beside the weights ``digit-classifier.pt`` in the weights cache, saying how they were trained (the default settings
are here) and how well they read. Nothing here imports torch: the command line shows these defaults in its help."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from pyro_cwvae.evaluation.sources import cache_dir
from pyro_cwvae.files.reading import read_bytes

FILE = "digit-classifier.pt"
FORMAT = 2  # bumped when the network or its training changes: cached weights of another format are trained again
STEPS, BATCH_SIZE, SEED = 2000, 64, 0
TEST_VIDEOS = 100  # test videos whose frames measure the accuracy recorded
MAX_RECORD_BYTES = 1 << 20  # a record is about 1 KB


@dataclass
class Record:
    """What ``digit-classifier.json`` says about the cached weights."""

    sha256: str
    steps: int
    batch_size: int
    seed: int
    pair_accuracy: float  # on ground-truth test frames: the ceiling of the digit accuracy of predictions
    digit_accuracy: dict[str, float] = field(default_factory=dict)  # per true class: how often it is read
    test_frames: int = 0
    train_seconds: float = 0.0
    format: int = FORMAT
    torch: str = ""  # the version that trained it


def classifier_path() -> Path:
    return cache_dir() / FILE


def read_record(path: Path | None = None) -> Record | None:
    """The record of the cached weights, or None when there is none of the current format."""
    path = path or classifier_path()
    record_path = path.with_suffix(".json")
    if not record_path.exists():
        return None
    text = read_bytes(record_path, MAX_RECORD_BYTES, "classifier record")  # UserError: not a regular file
    try:
        record = Record(**json.loads(text))
    except (ValueError, TypeError):  # damaged: trained again
        return None
    return record if record.format == FORMAT and path.exists() else None
