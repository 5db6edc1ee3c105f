import itertools

import pytest
import torch
from pyro import poutine

from pyro_cwvae.model.clock import Clock
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets, Transition

SETTINGS = [(L, k, T) for L, k, T in itertools.product([1, 2, 3, 4], [1, 2, 3, 6, 8], [1, 5, 36, 100, 217])]


def eq1_active_frames(level: int, factor: int, num_frames: int) -> list[int]:
    """Eq. 1 with 1-based frames, T_l = {t in [1, T] | t mod k^(l-1) = 1}, shifted to 0-based frames.

    For k^(l-1) = 1 the paper means every frame (t mod 1 = 0 for all t), so compare (t - 1) mod k^(l-1) = 0.
    """
    period = factor ** (level - 1)
    return [t - 1 for t in range(1, num_frames + 1) if (t - 1) % period == 0]


@pytest.mark.parametrize("levels,factor,num_frames", SETTINGS)
def test_active_frames_follow_eq1(levels, factor, num_frames):
    clock = Clock(levels, factor)
    for level in range(1, levels + 1):
        expected = eq1_active_frames(level, factor, num_frames)
        assert list(clock.active_frames(level, num_frames)) == expected
        assert clock.num_steps(level, num_frames) == len(expected)
        assert [clock.frame(level, i) for i in range(len(expected))] == expected


@pytest.mark.parametrize("levels,factor,num_frames", SETTINGS)
def test_parent_is_latest_active_step_above(levels, factor, num_frames):
    """Step i of level l is conditioned on the state of level l+1 copied to its frame (eq. 2)."""
    clock = Clock(levels, factor)
    for level in range(1, levels):
        above = eq1_active_frames(level + 1, factor, num_frames)
        for step, frame in enumerate(clock.active_frames(level, num_frames)):
            parent = clock.parent_step(step)
            assert above[parent] == max(tau for tau in above if tau <= frame)
            assert parent < clock.num_steps(level + 1, num_frames)


def record_gru_steps(monkeypatch, nets) -> dict[int, list]:
    """Per level, the (above, h) of every GRU step the networks take from now on, in order.

    Patched on the class ``Transition`` (whatever attribute of a level holds it), so every path to a step counts.
    """
    levels = {id(module): level for level in range(1, len(nets.levels) + 1)
              for module in nets.level(level).modules() if isinstance(module, Transition)}
    steps = {level: [] for level in levels.values()}
    deterministic = Transition.deterministic

    def recording(self, previous, above):
        h = deterministic(self, previous, above)
        steps[levels[id(self)]].append((above, h))
        return h

    monkeypatch.setattr(Transition, "deterministic", recording)
    return steps


def test_top_level_conditions_on_zeros_and_lower_levels_on_the_state_above(tiny_cfg, monkeypatch):
    """What the model feeds each level's GRU as the state above s_t^{l+1} (eq. 2): zeros at the top level, the
    sampled z and computed h of the level above (at its latest step, ``parent_step``) below it."""
    cfg = tiny_cfg.replace(levels=3)  # a middle level both receives and hands down a state
    nets = CWVAENets(cfg)
    steps = record_gru_steps(monkeypatch, nets)
    B, T = 2, cfg.seq_len
    trace = poutine.trace(model).get_trace(None, nets, cfg, num_frames=T, batch_size=B)
    clock = cfg.clock
    top = steps[cfg.levels]
    assert len(top) == clock.num_steps(cfg.levels, T)
    for above, _ in top:
        assert [tuple(part.shape) for part in above] == [(B, cfg.z_size), (B, cfg.h_size)]
        assert all(torch.count_nonzero(part) == 0 for part in above)
    for level in range(cfg.levels - 1, 0, -1):
        assert len(steps[level]) == clock.num_steps(level, T)
        for step, (above, _) in enumerate(steps[level]):
            parent = clock.parent_step(step)
            z_above = trace.nodes[clock.site_name(level + 1, clock.frame(level + 1, parent))]["value"]
            h_above = steps[level + 1][parent][1]
            assert torch.equal(above[0], z_above) and torch.equal(above[1], h_above)
            # Not zeros like the top level's (the sampled z is non-zero; h may still be 0 at the first
            # step, from zero biases and inputs).
            assert torch.count_nonzero(above[0]) > 0


def test_no_temporal_abstraction_and_rssm_are_ordinary_settings():
    no_tmp_abs = Clock(3, 1)
    assert [no_tmp_abs.num_steps(level, 10) for level in (1, 2, 3)] == [10, 10, 10]
    assert [no_tmp_abs.parent_step(i) for i in range(4)] == [0, 1, 2, 3]
    assert Clock(1, 6).num_steps(1, 10) == 10


@pytest.mark.parametrize("levels,factor", [(0, 2), (2, 0), (-1, 1)])
def test_invalid_clock_is_refused(levels, factor):
    with pytest.raises(ValueError):
        Clock(levels, factor)


def test_site_names_read_back_level_and_frame():
    assert Clock(3, 6).site_name(2, 36) == "s_2_36"


@pytest.mark.parametrize("levels,factor", [(1, 1), (3, 6), (4, 4)])
def test_parse_site_inverts_site_name(levels, factor):
    clock = Clock(levels, factor)
    for level in range(1, levels + 1):
        for frame in clock.active_frames(level, 200):
            assert Clock.parse_site(clock.site_name(level, frame)) == (level, frame)
    for other in ("x", "s_a_1", "s_1", "s_1_2_3", "prefix_s_1_2", "_RETURN"):
        assert Clock.parse_site(other) is None
