"""Clock schedules of the CW-VAE (paper eq. 1), with 0-based frames.

Level ``l`` (1 is the fastest, ``L`` the slowest) ticks every ``k**(l-1)`` frames: it is active at frames
``t`` with ``t % k**(l-1) == 0`` (eq. 1 reads ``t mod k^(l-1) = 1`` for 1-based frames). Over ``T`` frames it
has ``ceil(T / k**(l-1))`` active steps, and its step ``i`` (at frame ``i * k**(l-1)``) is conditioned on step
``i // k`` of the level above. ``k = 1`` (the NoTmpAbs ablation) and ``L = 1`` (an RSSM) are ordinary settings.
"""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    levels: int
    factor: int

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError(f"a CW-VAE needs at least one level, got levels={self.levels}")
        if self.factor < 1:
            raise ValueError(f"the temporal abstraction factor must be at least 1, got factor={self.factor}")

    def period(self, level: int) -> int:
        """Frames between two ticks of ``level``: k**(l-1)."""
        return self.factor ** (level - 1)

    def active_frames(self, level: int, num_frames: int) -> range:
        """The frames of T_l (eq. 1) among ``num_frames`` frames."""
        return range(0, num_frames, self.period(level))

    def num_steps(self, level: int, num_frames: int) -> int:
        """|T_l|: how many times ``level`` ticks over ``num_frames`` frames (levels above L count too)."""
        return -(-num_frames // self.period(level))

    def frame(self, level: int, step: int) -> int:
        """The frame at which ``level`` takes its ``step``-th step."""
        return step * self.period(level)

    def parent_step(self, step: int) -> int:
        """The step of the level above that conditions ``step`` of the level below."""
        return step // self.factor

    @property
    def top_period(self) -> int:
        """Frames in one step of the slowest level: the shortest sequence that holds one top-level step."""
        return self.period(self.levels)

    def site_name(self, level: int, frame: int) -> str:
        """The Pyro site of the latent state s_t^l: ``s_{level}_{frame}``."""
        return f"s_{level}_{frame}"

    @staticmethod
    def parse_site(name: str) -> tuple[int, int] | None:
        """(level, frame) of a latent site ``s_{level}_{frame}`` (``site_name``); None for sites of other names."""
        match = LATENT_SITE.match(name)
        return (int(match.group(1)), int(match.group(2))) if match else None


LATENT_SITE = re.compile(r"s_(\d+)_(\d+)$")
