"""The figures of a rollout and of an evaluation: written, readable and atomic, and drawing the right numbers.

The figures are caught as they are saved (``Figure.savefig``), and the data behind every curve, band and bar is
compared with the aggregate the test computes from the dataset with numpy.
"""
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import numpy as np
import pytest
import xarray as xr
from PIL import Image
from typer.testing import CliRunner

import pyro_cwvae.plots.rollout as plots
from pyro_cwvae.cli.app import app
from pyro_cwvae.errors import UserError
from pyro_cwvae.files.netcdf import EVALUATION_TITLE
from pyro_cwvae.plots.rollout import write_figures
from pyro_cwvae.training.history import History, Row
from pyro_cwvae.plots.evaluation import write_evaluation_figures
from pyro_cwvae.plots.history import is_history, read_history, write_history_figure

SAMPLES, SEQUENCES, TIME, CONTEXT, LEVELS, RATE, SEQ_LEN = 2, 2, 40, 10, 3, 4, 16


def rollout(channels: int, seed: int = 0, protocol: str = "paper", spread: bool = False) -> xr.Dataset:
    """A small synthetic rollout dataset with the schema the rollout command writes (with ``spread``, also the
    spread over samples that the uncertainty figure draws)."""
    rng = np.random.default_rng(seed)
    shape = (SEQUENCES, TIME, channels, 64, 64)
    truth = rng.integers(0, 256, shape, dtype=np.uint8)
    has_truth = np.ones((SEQUENCES, TIME), dtype=bool)
    has_truth[1, 30:] = False  # the second sequence runs past its ground truth
    truth[~has_truth] = 0
    noise = rng.integers(-20, 21, (SAMPLES, *shape))
    prediction = np.clip(truth.astype(int) + noise, 0, 255).astype(np.uint8)

    def scores(low, high, dims_shape):
        values = rng.uniform(low, high, dims_shape).astype(np.float32)
        values[..., ~has_truth] = np.nan
        return values

    psnr = scores(10, 30, (SAMPLES, SEQUENCES, TIME))
    psnr[0, 0, 0] = np.inf  # a frame reconstructed exactly
    time = np.arange(TIME)
    level = np.arange(1, LEVELS + 1)
    active = time[None, :] % RATE ** (level[:, None] - 1) == 0
    kl = rng.uniform(0, 5, (SEQUENCES, LEVELS, TIME)).astype(np.float32)
    kl[:, ~active] = np.nan
    frame_dims = ("sequence", "time", "channel", "y", "x")
    extra = {}
    if spread:
        latent_std = rng.uniform(0, 2, (SEQUENCES, LEVELS, TIME)).astype(np.float32)
        latent_std[:, ~active] = np.nan
        extra = {"prediction_std": (frame_dims, rng.integers(0, 128, shape, dtype=np.uint8)),
                 "latent_std": (("sequence", "level", "time"), latent_std)}
    return xr.Dataset(
        {
            "prediction": (("sample", *frame_dims), prediction),
            "truth": (frame_dims, truth),
            "is_context": ("time", time < CONTEXT),
            "has_truth": (("sequence", "time"), has_truth),
            "psnr": (("sample", "sequence", "time"), psnr),
            "ssim": (("sample", "sequence", "time"), scores(0, 1, (SAMPLES, SEQUENCES, TIME))),
            "psnr_best": (("sequence", "time"), psnr.max(0)),
            "ssim_best": (("sequence", "time"), scores(0, 1, (SEQUENCES, TIME))),
            "psnr_last_frame": (("sequence", "time"), scores(8, 20, (SEQUENCES, TIME))),
            "ssim_last_frame": (("sequence", "time"), scores(0, 0.8, (SEQUENCES, TIME))),
            "psnr_random_frame": (("sequence", "time"), scores(5, 15, (SEQUENCES, TIME))),
            "ssim_random_frame": (("sequence", "time"), scores(0, 0.5, (SEQUENCES, TIME))),
            "kl": (("sequence", "level", "time"), kl),
            "kl_table": ("level", np.nansum(kl[:, :, :SEQ_LEN], -1).mean(0), {"frames_per_sequence": SEQ_LEN}),
            **extra,
        },
        coords={
            "sample": np.arange(SAMPLES),
            "sequence": np.arange(SEQUENCES),
            "time": time,
            "channel": np.arange(channels),
            "y": np.arange(64),
            "x": np.arange(64),
            "level": level,
        },
        attrs={"protocol": protocol},
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_writes_every_figure(tmp_path, channels):
    paths = write_figures(rollout(channels), tmp_path, max_sequences=4, max_frames=6)

    assert [p.name for p in paths] == ["strip.png", "metrics.png", "kl.png", "rollout.gif"]
    for path in paths:
        assert path.is_file() and path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == path.suffix[1:].upper()
            assert image.width > 0 and image.height > 0
    with Image.open(tmp_path / "rollout.gif") as gif:
        assert gif.n_frames == TIME
        # truth and two samples side by side, each 64 px frame upscaled twice
        assert gif.width >= 3 * 2 * 64
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))


def test_long_rollouts_are_subsampled_in_the_gif(tmp_path, monkeypatch):
    monkeypatch.setattr(plots, "GIF_MAX_FRAMES", 7)
    path = plots.write_gif(rollout(1).isel(sequence=[0]), tmp_path / "short.gif")
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames == 7


def test_missing_prediction_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no variable 'prediction'"):
        write_figures(rollout(1).drop_vars("prediction"), tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.fixture
def saved(monkeypatch) -> dict[str, matplotlib.figure.Figure]:
    """Every figure saved from now on, by file stem ("metrics" for metrics.png, also when written through a
    temporary file ``.metrics.png.XXXX.tmp``). For speed nothing is rendered and no GIF is made: the tests above
    check the files themselves."""
    figures = {}

    def recording(fig, fname, *args, **kwargs):
        figures[Path(fname).name.lstrip(".").split(".")[0]] = fig

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording)
    monkeypatch.setattr(plots, "write_gif", lambda ds, path: Path(path))
    return figures


def finite(values: np.ndarray) -> np.ndarray:
    """NaN where ``values`` is infinite (an exact frame's PSNR) or missing: what the curves leave out."""
    return np.where(np.isfinite(values), values, np.nan)


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def band_edges(band, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper edge of a ``fill_between`` band at each of ``steps``."""
    vertices = band.get_paths()[0].vertices
    at = [vertices[vertices[:, 0] == step, 1] for step in steps]
    return np.array([ys.min() for ys in at]), np.array([ys.max() for ys in at])


def check_curve(line, x: np.ndarray, y: np.ndarray) -> None:
    np.testing.assert_array_equal(line.get_xdata(), x)
    np.testing.assert_allclose(line.get_ydata(), y, rtol=1e-5)


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_metric_figure_draws_the_mean_band_and_baselines_of_the_protocol(tmp_path, saved, protocol):
    ds = rollout(1, protocol=protocol)
    write_figures(ds, tmp_path)
    fig = saved["metrics"]
    future = np.arange(TIME) >= CONTEXT
    steps = np.arange(1, TIME - CONTEXT + 1)  # frames predicted after the last context frame
    for ax, metric in zip(fig.axes, ("psnr", "ssim")):
        # Paper: one curve per sequence, its best sample; standard: one per sample and sequence.
        raw = ds[f"{metric}_best"].values if protocol == "paper" else ds[metric].values.reshape(-1, TIME)
        curves = finite(raw[:, future])
        mean, std = np.nanmean(curves, 0), np.nanstd(curves, 0)
        lines = lines_by_label(ax)
        check_curve(lines["CW-VAE, best sample" if protocol == "paper" else "CW-VAE"], steps, mean)
        lower, upper = band_edges(ax.collections[0], steps)
        np.testing.assert_allclose(lower, mean - std, rtol=1e-5)
        np.testing.assert_allclose(upper, mean + std, rtol=1e-5)
        for baseline in ("last_frame", "random_frame"):
            want = np.nanmean(finite(ds[f"{metric}_{baseline}"].values[:, future]), 0)
            check_curve(lines[baseline.replace("_", " ")], steps, want)
    over = (f"the best of {SAMPLES} samples per sequence, mean and std over sequences" if protocol == "paper"
            else "mean and std over sequences and samples")
    assert fig.get_suptitle() == f"Open-loop prediction quality ({protocol} protocol): {over}"


def active_times(level: int) -> np.ndarray:
    """The frames where ``level`` ticks: every RATE**(level - 1)-th frame from 0."""
    return np.arange(0, TIME, RATE ** (level - 1))


def test_kl_figure_draws_the_table_and_the_kl_of_each_level_over_time(tmp_path, saved):
    ds = rollout(1)
    write_figures(ds, tmp_path)
    bars, curves = saved["kl"].axes
    kl = ds.kl.values  # (sequence, level, time)
    # Table 1: the KL summed over a training sequence's frames, mean over sequences; one bar per level.
    table = np.nansum(kl[:, :, :SEQ_LEN], -1).mean(0)
    np.testing.assert_allclose([bar.get_height() for bar in bars.patches], table, rtol=1e-6)
    assert [label.get_text() for label in bars.get_xticklabels()] == [str(level) for level in range(1, LEVELS + 1)]
    assert bars.get_title() == f"KL per training sequence of {SEQ_LEN} frames (Table 1)"
    lines = lines_by_label(curves)
    for level in range(1, LEVELS + 1):
        times = active_times(level)
        check_curve(lines[f"level {level}"], times, kl[:, level - 1, times].mean(0))


def context_lines(ax) -> list[float]:
    """Where the dotted vertical lines of ``ax`` stand."""
    return [line.get_xdata()[0] for line in ax.get_lines()
            if line.get_linestyle() == ":" and len(set(line.get_xdata())) == 1]


def test_kl_and_uncertainty_figures_mark_the_last_context_frame(tmp_path, saved):
    write_figures(rollout(1, spread=True), tmp_path)
    for ax in (saved["kl"].axes[1], *saved["uncertainty"].axes):
        assert context_lines(ax) == [CONTEXT - 1]


@pytest.mark.parametrize("sequences", [1, 2])
def test_plot_command_draws_the_sequences_asked_for(tmp_path, saved, sequences):
    from pyro_cwvae.prediction.rollout import write_rollout

    path = write_rollout(rollout(1), tmp_path / "rollout.nc")
    result = CliRunner().invoke(app, ["plot", str(path), "--sequences", str(sequences), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [label.get_text() for label in saved["strip"].axes[0].get_yticklabels()]
    assert [row for row in rows if row.endswith("truth")] == [f"seq {seq} truth" for seq in range(sequences)]


def test_kl_figure_says_when_no_training_sequence_fits(tmp_path, saved):
    ds = rollout(1)
    ds["kl_table"][:] = np.nan  # no whole training sequence in the frames with a KL
    write_figures(ds, tmp_path)
    bars = saved["kl"].axes[0]
    assert [bar.get_height() for bar in bars.patches] == [0] * LEVELS
    assert "no whole training sequence" in bars.texts[0].get_text()


def test_uncertainty_figure_draws_the_pixel_and_latent_spread(tmp_path, saved):
    ds = rollout(1, spread=True)
    assert [p.name for p in write_figures(ds, tmp_path)][-1] == "uncertainty.png"
    pixels, latents = saved["uncertainty"].axes
    pixel_std = ds.prediction_std.values.astype(float).mean((2, 3, 4)).mean(0)  # over pixels, then sequences
    check_curve(pixels.get_lines()[0], np.arange(TIME), pixel_std)
    lines = lines_by_label(latents)
    for level in range(1, LEVELS + 1):
        times = active_times(level)
        check_curve(lines[f"level {level}"], times, ds.latent_std.values[:, level - 1, times].mean(0))


@pytest.mark.parametrize("channels", [1, 3])
def test_strip_shows_truth_above_each_sample_at_the_labelled_times(tmp_path, saved, channels):
    ds = rollout(channels, spread=True)
    max_frames = 5
    write_figures(ds, tmp_path, max_frames=max_frames)
    ax = saved["strip"].axes[0]
    image = np.asarray(ax.images[0].get_array())
    times = [int(label.get_text().split()[-1]) for label in ax.get_xticklabels()]
    context = [label.get_text().startswith("ctx") for label in ax.get_xticklabels()]
    # Context frames (the last one among them), then `max_frames` predictions to the last frame.
    assert context == [t < CONTEXT for t in times] and CONTEXT - 1 in times and times[-1] == TIME - 1
    assert sum(not c for c in context) == max_frames
    truth = np.moveaxis(ds.truth.values, 2, -1)  # (sequence, time, H, W, C)
    pred = np.moveaxis(ds.prediction.values, 3, -1)
    std = np.minimum(np.moveaxis(ds.prediction_std.values, 2, -1).astype(int) * 2, 255)
    rows = [label.get_text() for label in ax.get_yticklabels()]
    # Per sequence: its truth, each sample's prediction, and the spread over samples (times the labelled gain).
    assert rows == [row for seq in range(SEQUENCES)
                    for row in [f"seq {seq} truth", *(f"sample {s}" for s in range(SAMPLES)), "std x2"]]
    for row, (label, y) in enumerate(zip(rows, ax.get_yticks())):
        seq = row // (SAMPLES + 2)
        for t, x in zip(times, ax.get_xticks()):
            top, left = int(y - 31.5), int(x - 31.5)  # ticks are at the centres of 64-pixel frames
            tile = image[top : top + 64, left : left + 64].reshape(64, 64, channels)
            if label.endswith("truth"):
                want = truth[seq, t] if ds.has_truth.values[seq, t] else np.full_like(truth[seq, t], 255)
            elif label.startswith("sample"):
                want = pred[int(label.split()[1]), seq, t]
            else:
                want = std[seq, t]
            np.testing.assert_array_equal(tile, want, err_msg=f"{label}, t={t}")


RUNS, EVAL_TIME, EVAL_CONTEXT, WINDOWS = ["one-level", "two-level"], 12, 4, [(4, 10), (10, 12)]


def evaluation(seed: int = 0) -> xr.Dataset:
    """A small synthetic evaluation dataset with the schema ``pyro-cwvae evaluate`` writes (two runs)."""
    rng = np.random.default_rng(seed)
    runs, windows = len(RUNS), len(WINDOWS)
    variables = {}
    for name in ("ssim", "psnr", "lpips", "digit_accuracy"):
        variables[name] = (("run", "time"), rng.uniform(0, 1, (runs, EVAL_TIME)).astype(np.float32),
                           {"aggregation": "mean over 2 sample(s) and the sequences"})
        for baseline in ("last_frame", "random_frame"):
            variables[f"{name}_{baseline}"] = ("time", rng.uniform(0, 1, EVAL_TIME).astype(np.float32))
    variables["digit_accuracy_truth"] = ("time", rng.uniform(0.9, 1, EVAL_TIME).astype(np.float32))
    fvd = rng.uniform(50, 500, (runs, windows)).astype(np.float32)
    fvd[:, -1] = np.nan  # the last window is too short for a clip
    variables["fvd"] = (("run", "window"), fvd, {"clip_frames": 16})
    variables["fvd_horizon"] = ("run", rng.uniform(50, 500, runs).astype(np.float32))
    for baseline in ("last_frame", "random_frame"):
        variables[f"fvd_{baseline}"] = ("window", rng.uniform(300, 900, windows).astype(np.float32))
        variables[f"fvd_horizon_{baseline}"] = ((), np.float32(rng.uniform(300, 900)))
    kl_table = rng.uniform(0, 40, (runs, 2)).astype(np.float32)
    kl_table[0, 1] = np.nan  # the one-level run has no level 2
    variables["kl_table"] = (("run", "level"), kl_table, {"frames_per_sequence": 8})
    variables["iwae"] = (("run", "sequence"), rng.uniform(-50, -40, (runs, 3)).astype(np.float32), {"particles": 4})
    variables["elbo"] = (("run", "sequence"), rng.uniform(-60, -50, (runs, 3)).astype(np.float32))
    variables["is_context"] = ("time", np.arange(EVAL_TIME) < EVAL_CONTEXT)
    return xr.Dataset(variables, coords={
        "run": RUNS, "time": np.arange(EVAL_TIME), "level": [1, 2], "sequence": np.arange(3),
        "window": np.arange(windows), "window_start": ("window", [w[0] for w in WINDOWS]),
        "window_stop": ("window", [w[1] for w in WINDOWS])},
        attrs={"dataset": "mmnist", "samples": 2, "sequences": 3, "context": EVAL_CONTEXT, "protocol": "standard"})


def bars_by_label(ax) -> dict[str, list]:
    """The bars of each ``ax.bar`` call, by the first word of its legend label: [(centre, height), ...]."""
    return {container.get_label().split(":")[0].split(" (")[0]: [(bar.get_x() + bar.get_width() / 2,
                                                                   bar.get_height()) for bar in container]
            for container in ax.containers}


def test_evaluation_figure_draws_every_run_the_baselines_fvd_and_kl_bars(tmp_path, saved):
    ds = evaluation()
    write_evaluation_figures(ds, tmp_path)
    axes = saved["evaluation"].axes
    future = np.arange(EVAL_TIME) >= EVAL_CONTEXT
    steps = np.arange(1, EVAL_TIME - EVAL_CONTEXT + 1)
    for ax, name in zip(axes[:4], ("ssim", "psnr", "lpips", "digit_accuracy")):
        lines = lines_by_label(ax)
        for i, run in enumerate(RUNS):
            check_curve(lines[run], steps, ds[name].values[i, future])
        for baseline in ("last_frame", "random_frame"):
            check_curve(lines[baseline.replace("_", " ")], steps, ds[f"{name}_{baseline}"].values[future])
    check_curve(lines_by_label(axes[3])["true frames"], steps, ds.digit_accuracy_truth.values[future])

    fvd_ax, kl_ax = axes[4], axes[5]
    fvd = bars_by_label(fvd_ax)
    for i, run in enumerate(RUNS):  # one bar per window, side by side within it, a missing FVD drawn as 0
        centres, heights = zip(*fvd[run])
        np.testing.assert_allclose(heights, np.nan_to_num(ds.fvd.values[i]), rtol=1e-6)
        assert np.all(np.abs(np.array(centres) - np.arange(len(WINDOWS))) < 0.4)
    assert all(a[0] < b[0] for a, b in zip(fvd[RUNS[0]], fvd[RUNS[1]]))
    baselines = {c.get_label().split(" (")[0]: c for c in fvd_ax.collections}
    for baseline in ("last_frame", "random_frame"):  # one dashed line over each window
        segments = baselines[baseline.replace("_", " ")].get_segments()
        np.testing.assert_allclose([seg[:, 1] for seg in segments],
                                   np.repeat(ds[f"fvd_{baseline}"].values[:, None], 2, 1), rtol=1e-6)
        label = baselines[baseline.replace("_", " ")].get_label()
        assert label.endswith(f"(horizon {float(ds[f'fvd_horizon_{baseline}']):.4g})"), label
    # Windows named by the predicted frames they hold, counted from 1 after the context (4 frames here).
    assert [tick.get_text() for tick in fvd_ax.get_xticklabels()] == ["1-6", "7-8"]
    assert [tick.get_text() for tick in kl_ax.get_xticklabels()] == ["1", "2"]
    assert list(kl_ax.get_xticks()) == [0, 1]
    kl = bars_by_label(kl_ax)
    for i, run in enumerate(RUNS):
        assert np.all(np.abs(np.array([x for x, _ in kl[run]]) - np.arange(2)) < 0.4)  # each bar at its level
        np.testing.assert_allclose([h for _, h in kl[run]], np.nan_to_num(ds.kl_table.values[i]), rtol=1e-6)
        label = next(c.get_label() for c in kl_ax.containers if c.get_label().startswith(run))
        iwae, elbo = ds.iwae.values[i].mean(), ds.elbo.values[i].mean()
        assert f"IWAE_4 {iwae:.4g}, ELBO {elbo:.4g}" in label


@pytest.mark.parametrize("aggregation, title", [
    ("mean over 2 sample(s) and the sequences", "mean over 2 sample(s) and the sequences"),
    ("per sequence the best of 2 sample(s) (highest mean over the predicted frames), mean over sequences",
     "best of 2 sample(s) per sequence, mean over sequences"),
])
def test_evaluation_curves_say_how_the_samples_were_taken(tmp_path, saved, aggregation, title):
    ds = evaluation()
    for name in ("ssim", "psnr", "lpips", "digit_accuracy"):
        ds[name].attrs["aggregation"] = aggregation
    write_evaluation_figures(ds, tmp_path)
    assert [ax.get_title() for ax in saved["evaluation"].axes[:4]] == [title] * 4


def saved_history(tmp_path, levels: int, steps: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """A history as training writes it, with known losses and KLs; returns its path, the losses and the KLs."""
    rng = np.random.default_rng(0)
    loss, kl = rng.normal(size=steps), rng.uniform(0.1, 5.0, size=(steps, levels))
    history = History(levels)
    history.extend([Row(step=i + 1, loss=loss[i], reconstruction=loss[i] - kl[i].sum(), grad_norm=1.0, kl_scale=1.0,
                        kl=kl[i]) for i in range(steps)])
    path = tmp_path / "history.nc"
    history.save(path, {})
    return path, loss, kl


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each entry and the ``window - 1`` before it (fewer at the start), written as a plain loop."""
    return np.array([values[max(0, i - window + 1):i + 1].mean(0) for i in range(len(values))])


def test_history_figure_draws_the_running_means_of_the_loss_each_level_and_the_share(tmp_path, saved):
    path, loss, kl = saved_history(tmp_path, levels=3, steps=23)
    assert is_history(path) and not is_history(tmp_path / "missing.nc")
    write_history_figure(read_history(path), tmp_path, window=5)
    assert "preview_step" not in read_history(path).dims
    terms, kls, share = saved["training"].axes  # one row: no previews, no second row
    steps = np.arange(1, 24)
    check_curve(lines_by_label(terms)["negative ELBO"], steps, running_mean(loss, 5))
    for level in range(1, 4):
        check_curve(lines_by_label(kls)[f"level {level}"], steps, running_mean(kl[:, level - 1], 5))
    mean = running_mean(kl, 5)
    check_curve(share.get_lines()[0], steps, 100 * mean[:, 1:].sum(1) / mean.sum(1))


def test_history_figure_smooths_over_a_fiftieth_of_the_run_by_default(tmp_path, saved):
    """About 50 independent points along the run: 200 steps are drawn as running means of 4."""
    path, _, _ = saved_history(tmp_path, levels=2, steps=200)
    history = read_history(path)
    write_history_figure(history, tmp_path)
    assert saved["training"]._suptitle.get_text() == "Training history, running mean of 4 step(s)"
    curve = lines_by_label(saved["training"].axes[0])["negative ELBO"]
    np.testing.assert_array_equal(curve.get_xdata(), np.arange(1, 201))
    # float32 sums: near 0 a relative tolerance alone is too tight
    np.testing.assert_allclose(curve.get_ydata(), running_mean(history.loss.values.astype(float), 4), atol=1e-6)


def test_history_figure_of_one_level_says_so(tmp_path, saved):
    path, _, _ = saved_history(tmp_path, levels=1, steps=4)
    write_history_figure(read_history(path), tmp_path)
    assert saved["training"].axes[2].texts[0].get_text() == "one level"


def test_history_without_steps_or_kl_is_a_user_error(tmp_path):
    path, _, _ = saved_history(tmp_path, levels=2, steps=3)
    ds = xr.open_dataset(path).load()
    ds.drop_vars("kl").to_netcdf(tmp_path / "no-kl.nc")
    with pytest.raises(UserError, match="no variable 'kl'"):
        read_history(tmp_path / "no-kl.nc")
    ds.isel(step=slice(0, 0)).to_netcdf(tmp_path / "empty.nc", unlimited_dims=["step"])
    with pytest.raises(UserError, match="no step yet"):
        read_history(tmp_path / "empty.nc")


PREVIEW_STEPS = np.array([4, 8, 12])
PREVIEWS = {  # what each preview measured: the model's scores change, the baselines' stay
    "ssim": [0.31, 0.45, 0.62], "ssim_last_frame": [0.5] * 3, "ssim_random_frame": [0.2] * 3,
    "psnr": [11.0, np.nan, np.inf], "psnr_last_frame": [14.0] * 3, "psnr_random_frame": [9.0] * 3,
    "digit_accuracy": [0.1, 0.4, 0.7], "digit_accuracy_last_frame": [0.3] * 3, "digit_accuracy_random_frame": [0.1] * 3,
}


def saved_history_with_previews(tmp_path, accuracy: bool) -> Path:
    """A 12-step history with previews after steps 4, 8 and 12 (a missing and an exact PSNR among them), with or
    without the digit accuracy."""
    path, _, _ = saved_history(tmp_path, levels=2, steps=12)
    history = History.load(path, levels=2, upto_step=12)
    names = [name for name in PREVIEWS if accuracy or not name.startswith("digit")]
    for i, step in enumerate(PREVIEW_STEPS):
        history.add_preview(int(step), {name: PREVIEWS[name][i] for name in names},
                            {name: {"long_name": f"mean {name}", "units": "1"} for name in names})
    history.save(path, {})
    return path


@pytest.mark.parametrize("accuracy", [False, True])
def test_history_figure_draws_the_previews_against_their_baselines_in_a_second_row(tmp_path, saved, accuracy):
    write_history_figure(read_history(saved_history_with_previews(tmp_path, accuracy)), tmp_path)
    axes = saved["training"].axes
    assert len(axes) == (6 if accuracy else 5)
    panels = [("ssim", "SSIM"), ("psnr", "PSNR")] + [("digit_accuracy", "digit accuracy")] * accuracy
    for top, ax, (name, shown) in zip(axes, axes[3:], panels):
        assert ax.get_title() == f"previews: {shown} of open-loop predictions"
        assert ax.get_shared_x_axes().joined(ax, top)  # on the steps of the panel above
        model, last, random = ax.get_lines()
        assert [line.get_label() for line in (last, random)] == ["last context frame repeated",
                                                                 "random training frame"]
        assert model.get_marker() == "o" and (last.get_linestyle(), random.get_linestyle()) == ("--", ":")
        for line, suffix in ((model, ""), (last, "_last_frame"), (random, "_random_frame")):
            expected = np.array(PREVIEWS[name + suffix], dtype=np.float32)
            np.testing.assert_array_equal(line.get_xydata(),
                                          np.column_stack([PREVIEW_STEPS, np.where(np.isfinite(expected), expected,
                                                                                   np.nan)]))
    if accuracy:
        assert axes[5].get_ylim() == (-0.02, 1.02)


def test_plot_command_draws_a_history_with_previews(tmp_path):
    path = saved_history_with_previews(tmp_path, accuracy=True)
    result = CliRunner().invoke(app, ["plot", str(path), "--out", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "figures" / "training.png") as image:  # two rows of panels: taller than wide / 3
        assert image.format == "PNG" and image.height > image.width / 3


def test_plot_draws_each_kind_of_file_without_importing_torch(tmp_path):
    """Drawing a file needs no model: ``plot`` of a rollout, an evaluation and a history, in a fresh interpreter,
    imports neither torch nor Pyro (seconds of waiting before every figure, or before a mistyped path's error)."""
    rollout(1).to_netcdf(tmp_path / "rollout.nc")
    evaluation().assign_attrs(title=EVALUATION_TITLE).to_netcdf(tmp_path / "eval.nc")
    history, _, _ = saved_history(tmp_path, levels=2, steps=5)
    files = [tmp_path / "rollout.nc", tmp_path / "eval.nc", history]
    script = f"""
import sys
from typer.testing import CliRunner
from pyro_cwvae.cli.app import app
for path in {list(map(str, files))!r}:
    result = CliRunner().invoke(app, ["plot", path, "--out", {str(tmp_path / "figures")!r}])
    assert result.exit_code == 0, result.output
print(",".join(name for name in ("torch", "pyro") if name in sys.modules))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported to draw the files: {done.stdout.strip()}"
    assert {path.name for path in (tmp_path / "figures").iterdir()} >= {"strip.png", "evaluation.png", "training.png"}
