"""Interventions on the levels of a rollout (--swap-levels, --fix-level) and the spread over samples: the sites
the intervention touches, the ones it must leave alone, and the uncertainty variables against NumPy."""
import numpy as np
import pyro
import pytest
import torch
import xarray as xr
from pyro import poutine
from typer.testing import CliRunner

from pyro_cwvae import api
from pyro_cwvae.cli.app import app
from pyro_cwvae.model.config import Config
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.prediction.latents import context_latents, latents_level_by_level, rollout_trace, swapped_sites
from pyro_cwvae.prediction.options import Intervention
from pyro_cwvae.prediction.spread import PixelSpread, latent_spread
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.prediction.run import Run
from pyro_cwvae.model.step_sharing import sharing_steps
from pyro_cwvae.training.loop import fit

SAMPLES, SEQUENCES, FRAMES = 2, 3, 12


def three_levels(tiny_cfg, context_frames=5):
    """An untrained 3-level CW-VAE with k 2 (periods 1, 2, 4) and the context of SAMPLES x SEQUENCES rows,
    sample-major, each sample of a sequence seeing the same frames."""
    cfg = tiny_cfg.replace(levels=3, seq_len=8)
    run = Run(cfg, CWVAENets(cfg).eval(), model, guide, step=0)
    videos = torch.rand(SEQUENCES, context_frames, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    return run, videos.repeat(SAMPLES, 1, 1, 1, 1)


def sites(run, context, seed=5, **intervention):
    """{site name: (SAMPLES, SEQUENCES, z) value} of the rollout's model trace under ``intervention``."""
    pyro.set_rng_seed(seed)
    trace = rollout_trace(run, context, FRAMES, SEQUENCES, Intervention(**intervention))
    return {name: site["value"].view(SAMPLES, SEQUENCES, -1) for name, site in trace.nodes.items()
            if name.startswith("s_")}


def level(name):
    return int(name.split("_")[1])


def frame(name):
    return int(name.split("_")[2])


@pytest.mark.parametrize("swap, donor", [(2, 1), (3, 0), (1, 2)])
def test_swapped_levels_are_sequence_js_plain_rollout(tiny_cfg, swap, donor):
    run, context = three_levels(tiny_cfg)
    plain = sites(run, context)
    swapped = sites(run, context, swap_levels=swap, from_sequence=donor)
    assert set(swapped) == set(plain)
    upper = [name for name in plain if level(name) >= swap]
    assert {frame(name) for name in upper} >= {0, 4, 8}  # context and predicted steps
    for name in upper:  # every sequence, each sample: sequence J's value of that sample
        want = plain[name][:, donor:donor + 1].expand(-1, SEQUENCES, -1)
        assert torch.equal(swapped[name], want), name
    lower = [name for name in plain if level(name) < swap]
    for name in lower:  # the sequences keep lower levels of their own, which differ from one another
        assert not torch.equal(swapped[name][:, 0], swapped[name][:, 1]), name


def test_lower_levels_filter_their_own_context_given_the_swapped_levels(tiny_cfg):
    run, context = three_levels(tiny_cfg, context_frames=4)  # one whole top step: every context step filters
    intervention = Intervention(swap_levels=2, from_sequence=1)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        given = swapped_sites(run, context, FRAMES, SEQUENCES, intervention)
        decided = latents_level_by_level(run, context, 0, given=given)
        posterior = poutine.trace(poutine.replay(run.guide, trace=decided)).get_trace(context, run.nets, run.cfg)
    own = [f"s_1_{t}" for t in range(4)]
    assert set(decided.nodes) - set(given.nodes) == set(own)
    for name in own:  # q(s_t^1 | s_{t-1}^1, swapped s_t^2, e_t^1 of the row's own frames)
        assert torch.equal(decided.nodes[name]["fn"].mean, posterior.nodes[name]["fn"].mean), name
    for name in given.nodes:
        assert decided.nodes[name]["value"] is given.nodes[name]["value"]


def test_swap_uses_the_frames_of_sequence_j_above_and_of_each_sequence_below(tiny_cfg):
    run, context = three_levels(tiny_cfg)
    before = sites(run, context, swap_levels=2, from_sequence=1)
    edited = context.view(SAMPLES, SEQUENCES, *context.shape[1:]).clone()
    edited[:, 0] = 1 - edited[:, 0]  # sequence 0 is no donor: only its own lower levels may change
    after = sites(run, edited.view_as(context), swap_levels=2, from_sequence=1)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(level(name) == 1 for name in changed)
    assert all(torch.equal(before[name][:, 1:], after[name][:, 1:]) for name in before)
    edited = context.view(SAMPLES, SEQUENCES, *context.shape[1:]).clone()
    edited[:, 1] = 1 - edited[:, 1]  # the donor's frames change every sequence's upper levels
    after = sites(run, edited.view_as(context), swap_levels=2, from_sequence=1)
    assert all(not torch.equal(before[name][:, 0], after[name][:, 0]) for name in ("s_3_0", "s_2_2", "s_2_8"))


@pytest.mark.parametrize("fixed", [1, 2, 3])
def test_fixed_level_holds_its_last_context_value_and_nothing_before_changes(tiny_cfg, fixed):
    run, context = three_levels(tiny_cfg)  # context 5: the last context steps are s_1_4, s_2_4, s_3_4
    plain = sites(run, context)
    held = sites(run, context, fix_level=fixed)
    for name in plain:
        if level(name) == fixed and frame(name) >= 5:
            assert torch.equal(held[name], plain[f"s_{fixed}_4"]), name
        elif frame(name) < 5 or level(name) > fixed:  # the context's latents, and the levels above
            assert torch.equal(held[name], plain[name]), name
    below = [name for name in plain if level(name) < fixed and frame(name) >= 5]
    assert all(not torch.equal(held[name], plain[name]) for name in below)
    assert not torch.equal(plain[f"s_{fixed}_8"], plain[f"s_{fixed}_4"])  # unheld, the level moves on


def test_interventions_compose_with_prior_levels(tiny_cfg):
    run, context = three_levels(tiny_cfg)
    plain = sites(run, context, prior_levels=1)
    both = sites(run, context, prior_levels=1, swap_levels=3, from_sequence=2, fix_level=2)
    for name in plain:
        if level(name) == 3:
            assert torch.equal(both[name], plain[name][:, 2:3].expand(-1, SEQUENCES, -1)), name
        if level(name) == 2 and frame(name) >= 5:
            assert torch.equal(both[name], both["s_2_4"]), name


@pytest.mark.parametrize("options, message", [
    (dict(swap_levels=2), "--swap-levels L and --from-sequence J go together"),
    (dict(from_sequence=0), "go together"),
    (dict(swap_levels=4, from_sequence=0), "--swap-levels 4 must lie between 1 and the run's 3 levels"),
    (dict(swap_levels=0, from_sequence=0), "--swap-levels 0 must lie between 1"),
    (dict(swap_levels=2, from_sequence=3), "--from-sequence 3 must be one of the 3 sequences, 0 to 2"),
    (dict(swap_levels=2, from_sequence=-1), "--from-sequence -1"),
    (dict(fix_level=0), "--fix-level 0 must lie between 1 and the run's 3 levels"),
    (dict(fix_level=2, swap_levels=2, from_sequence=0), "--fix-level 2 must lie below --swap-levels 2"),
])
def test_intervention_rejects_what_cannot_be_done(options, message):
    with pytest.raises(UserError, match=message):
        Intervention(**options).check(levels=3, sequences=3)


def test_intervention_attributes_name_what_was_done():
    assert Intervention().attrs() == {"interventions": "none"}
    attrs = Intervention(prior_levels=1, swap_levels=2, from_sequence=0, fix_level=1).attrs()
    assert attrs["swap_levels"] == 2 and attrs["from_sequence"] == 0 and attrs["fix_level"] == 1
    assert "levels >= 2 replayed from sequence 0" in attrs["interventions"]
    assert "level 1 held" in attrs["interventions"] and "top 1 level" in attrs["interventions"]


def test_latent_spread_is_the_rms_over_dimensions_of_the_std_over_samples():
    rng = np.random.default_rng(0)
    trace = poutine.Trace()
    values = {"s_2_0": rng.normal(size=(3 * 2, 4)), "s_1_0": rng.normal(size=(6, 4)), "s_1_1": rng.normal(size=(6, 4))}
    for name, value in values.items():
        trace.add_node(name, type="sample", value=torch.from_numpy(value).float())
    trace.add_node("x", type="sample", value=torch.zeros(6, 1))
    spread = latent_spread(trace, levels=2, samples=3, num_frames=3)
    assert spread.shape == (2, 2, 3)
    for name, value in values.items():
        want = np.sqrt(value.reshape(3, 2, 4).var(axis=0, ddof=1).mean(-1))
        np.testing.assert_allclose(spread[:, int(name[2]) - 1, int(name[4])], want, rtol=1e-5)
    assert np.isnan(spread[:, 1, 1:]).all() and np.isnan(spread[:, 0, 2]).all()


def test_pixel_spread_over_samples_chunk_by_chunk():
    rng = np.random.default_rng(1)
    means = rng.uniform(-0.2, 1.2, size=(3 * 2, 5, 1, 64, 64)).astype(np.float32)  # 3 samples x 2 sequences
    spread = PixelSpread(samples=3, sequences=2, num_frames=5, channels=1)
    for frames in (slice(0, 2), slice(2, 5)):
        spread.add(frames, torch.from_numpy(means[:, frames]))
    pixels = np.clip(means, 0, 1).reshape(3, 2, 5, 1, 64, 64).astype(np.float64) * 255
    np.testing.assert_allclose(spread.mean, pixels.mean(0), atol=0.5 + 1e-3)
    np.testing.assert_allclose(spread.std, pixels.std(0, ddof=1), atol=0.5 + 1e-3)
    variables = spread.variables()
    assert variables["prediction_std"][0] == ("sequence", "time", "channel", "y", "x")
    assert variables["prediction_std"][2]["units"] == "pixel intensity 0-255"


def test_one_sample_has_a_mean_but_no_spread():
    spread = PixelSpread(samples=1, sequences=2, num_frames=3, channels=1)
    spread.add(slice(0, 3), torch.full((2, 3, 1, 64, 64), 0.5))
    assert set(spread.variables()) == {"prediction_mean"}
    assert (spread.mean == 128).all()


def with_spread(ds):
    """The synthetic rollout of test_plots with the spread variables a rollout of several samples has."""
    rng = np.random.default_rng(2)
    frame = ("sequence", "time", "channel", "y", "x")
    std = rng.integers(0, 128, (ds.sizes["sequence"], ds.sizes["time"], ds.sizes["channel"], 64, 64), np.uint8)
    spread = rng.uniform(0, 1, (ds.sizes["sequence"], ds.sizes["level"], ds.sizes["time"])).astype(np.float32)
    spread[np.isnan(ds.kl.values)] = np.nan
    return ds.assign(prediction_std=(frame, std), latent_std=(("sequence", "level", "time"), spread))


def test_strip_shows_the_pixel_spread_under_each_sequences_samples(tmp_path):
    from tests.test_plots import SAMPLES, rollout as synthetic
    from pyro_cwvae.plots import rollout as plots

    ds = with_spread(synthetic(1))
    fig = plots.plot_strip(ds, max_frames=3)
    try:
        ax = fig.axes[0]
        labels = [label.get_text() for label in ax.get_yticklabels()]
        assert labels == [f"seq {n} truth" if row == "truth" else row for n in (0, 1)
                          for row in ("truth", "sample 0", "sample 1", "std x2")]
        mosaic = ax.images[0].get_array()
        centre = int(ax.get_yticks()[SAMPLES + 1]), int(ax.get_xticks()[-1])  # std row, last predicted frame
        std = ds.prediction_std.isel(sequence=0, time=-1, channel=0).values
        assert mosaic[centre] == min(255, 2 * int(std[31, 31]))
    finally:
        plots.plt.close(fig)
    assert "uncertainty.png" not in [p.name for p in plots.write_figures(synthetic(1), tmp_path / "plain")]
    paths = plots.write_figures(ds, tmp_path / "spread")
    assert [p.name for p in paths][-1] == "uncertainty.png"


def test_uncertainty_figure_draws_each_levels_latent_spread_at_its_active_frames():
    from tests.test_plots import rollout as synthetic
    from pyro_cwvae.plots import rollout as plots

    ds = with_spread(synthetic(3))
    fig = plots.plot_uncertainty(ds)
    try:
        pixels, latents = fig.axes
        want = ds.prediction_std.astype(float).mean(("sequence", "channel", "y", "x")).values
        np.testing.assert_allclose(pixels.lines[0].get_ydata(), want, rtol=1e-5)
        for i, line in enumerate(latents.lines[:ds.sizes["level"]]):
            spread = ds.latent_std.isel(level=i).mean("sequence").values
            np.testing.assert_allclose(line.get_ydata(), spread[np.isfinite(spread)], rtol=1e-6)
            np.testing.assert_array_equal(line.get_xdata(), ds.time.values[np.isfinite(spread)])
    finally:
        plots.plt.close(fig)


@pytest.mark.parametrize("name, edit, message", [
    ("latent_std", lambda v: v.fillna(0).astype(np.int32), "variable 'latent_std' is int32, not floating point"),
    ("prediction_std", lambda v: v.astype(np.float32), "variable 'prediction_std' is float32, not uint8"),
    ("prediction_std", lambda v: v.isel(channel=0), "variable 'prediction_std' has dims"),
])
def test_a_rollout_file_with_a_malformed_spread_is_refused(tmp_path, name, edit, message):
    from tests.test_plots import rollout as synthetic
    from pyro_cwvae.plots.files import read_rollout

    ds = with_spread(synthetic(1))
    ds[name] = edit(ds[name])
    ds.to_netcdf(tmp_path / "bad.nc", engine="netcdf4")
    with pytest.raises(UserError, match=message):
        read_rollout(tmp_path / "bad.nc")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 2-step run of the tiny model (2 levels, k 2) on generated Moving MNIST with 30-frame test videos."""
    from tests.conftest import TINY

    cfg = Config(**{**TINY, "steps": 2}, run_dir=str(tmp_path_factory.mktemp("run")))
    fit(cfg, GeneratedMovingMNIST(), progress=False)
    return cfg.run_dir


def roll(run, **options):
    data = GeneratedMovingMNIST(test_length=30)
    return api.rollout(run, **{**dict(horizon=12, context=4, samples=3, sequences=3), **options}, dataset=data)


@pytest.fixture(scope="module")
def loaded(run_dir):
    return api.load_run(run_dir, device="cpu")


def test_a_plain_rollout_replays_the_context_latents_into_the_prior(tiny_cfg):
    run, context = three_levels(tiny_cfg)
    pyro.set_rng_seed(7)
    states = rollout_trace(run, context, FRAMES, SEQUENCES).nodes["_RETURN"]["value"]
    pyro.set_rng_seed(7)
    with torch.no_grad(), sharing_steps(run.nets):
        decided = context_latents(run, context)
        expected = poutine.replay(run.model, trace=decided)(None, run.nets, run.cfg, num_frames=FRAMES,
                                                            batch_size=context.shape[0])
    assert torch.equal(states, expected)


def test_swapping_every_level_predicts_sequence_js_frames(loaded):
    plain = roll(loaded)
    swapped = roll(loaded, swap_levels=1, from_sequence=2)
    for n in range(3):  # every state is sequence 2's, so every decoded frame is too
        np.testing.assert_array_equal(swapped.prediction.isel(sequence=n), plain.prediction.isel(sequence=2))
    np.testing.assert_array_equal(swapped.truth, plain.truth)  # the scores stay against each sequence's truth
    assert swapped.attrs["swap_levels"] == 1 and swapped.attrs["from_sequence"] == 2
    assert "levels >= 1 replayed from sequence 2" in swapped.attrs["interventions"]
    assert plain.attrs["interventions"] == "none" and "swap_levels" not in plain.attrs


def test_swapped_top_level_spreads_as_sequence_js(loaded):
    plain = roll(loaded)
    swapped = roll(loaded, swap_levels=2, from_sequence=0)
    top = swapped.latent_std.sel(level=2)
    for n in range(3):
        np.testing.assert_array_equal(top.isel(sequence=n), plain.latent_std.sel(level=2).isel(sequence=0))
    assert not np.array_equal(swapped.latent_std.sel(level=1).isel(sequence=1),
                              swapped.latent_std.sel(level=1).isel(sequence=0), equal_nan=True)


def test_a_fixed_level_stops_spreading_after_the_context(loaded):
    held = roll(loaded, fix_level=2)
    spread = held.latent_std.sel(level=2).values  # (sequence, time); level 2 is active at even frames
    for t in range(4, 16, 2):  # the last context step is frame 2
        np.testing.assert_array_equal(spread[:, t], spread[:, 2])
    assert held.attrs["fix_level"] == 2 and "level 2 held" in held.attrs["interventions"]
    plain = roll(loaded)
    np.testing.assert_array_equal(held.prediction.isel(time=slice(0, 4)), plain.prediction.isel(time=slice(0, 4)))


def test_spread_of_the_frames_matches_the_saved_samples(loaded, tmp_path):
    ds = roll(loaded, samples=4)
    frames = ds.prediction.values.astype(np.float64)  # uint8: each within half a level of the float mean
    np.testing.assert_allclose(ds.prediction_mean, frames.mean(0), atol=1.0)
    np.testing.assert_allclose(ds.prediction_std, frames.std(0, ddof=1), atol=1.0)
    assert ds.prediction_std.values.max() > 0
    api.save(ds, tmp_path / "rollout.nc")
    loaded_back = api.open_rollout(tmp_path / "rollout.nc")
    xr.testing.assert_identical(loaded_back, ds)


def test_one_sample_writes_no_spread(loaded):
    ds = roll(loaded, samples=1)
    assert "prediction_mean" in ds and "prediction_std" not in ds and "latent_std" not in ds


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_rollout_records_the_intervention(run_dir, tmp_path):
    out = tmp_path / "swapped.nc"
    result = invoke("rollout", "--run", run_dir, "--horizon", 4, "--context", 4, "--sequences", 2, "--samples", 2,
                    "--swap-levels", 2, "--from-sequence", 1, "--fix-level", 1, "--quiet", "--out", out)
    assert result.exit_code == 0, result.output
    assert "interventions: levels >= 2 replayed from sequence 1" in result.output
    with xr.open_dataset(out) as ds:
        assert ds.attrs["swap_levels"] == 2 and ds.attrs["from_sequence"] == 1 and ds.attrs["fix_level"] == 1
        assert {"prediction_mean", "prediction_std", "latent_std"} <= set(ds.variables)
    result = invoke("plot", out, "--out", tmp_path / "figures")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "figures" / "uncertainty.png").is_file()


@pytest.mark.parametrize("args, message", [
    (["--swap-levels", 2], "--swap-levels L and --from-sequence J go together"),
    (["--swap-levels", 2, "--from-sequence", 5], "--from-sequence 5 must be one of the 2 sequences"),
    (["--fix-level", 3], "--fix-level 3 must lie between 1 and the run's 2 levels"),
])
def test_cli_rollout_refuses_an_impossible_intervention_in_one_line(run_dir, tmp_path, args, message):
    result = invoke("rollout", "--run", run_dir, "--horizon", 4, "--context", 4, "--sequences", 2, "--quiet",
                    "--out", tmp_path / "x.nc", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "x.nc").exists()
