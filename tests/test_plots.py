"""The figures of a rollout are written, readable, and atomic."""
import numpy as np
import pytest
import xarray as xr
from PIL import Image

import pyro_cwvae.plots as plots
from pyro_cwvae.errors import UserError
from pyro_cwvae.plots import write_figures

SAMPLES, SEQUENCES, TIME, CONTEXT, LEVELS, RATE, SEQ_LEN = 2, 2, 40, 10, 3, 4, 16


def rollout(channels: int, seed: int = 0, protocol: str = "paper") -> xr.Dataset:
    """A small synthetic rollout dataset with the schema the rollout command writes."""
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


@pytest.mark.parametrize("protocol", ["paper", "standard"])
def test_metric_curves_follow_the_protocol(protocol):
    ds = rollout(1, protocol=protocol)
    fig = plots.plot_metrics(ds)
    try:
        future = ds.isel(time=slice(CONTEXT, None))
        psnr = future.psnr_best if protocol == "paper" else future.psnr.stack(curve=("sample", "sequence"))
        psnr = psnr.where(np.isfinite(psnr))
        want = psnr.mean("curve" if protocol == "standard" else "sequence").values
        np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), want, rtol=1e-6)
        assert np.array_equal(fig.axes[0].lines[0].get_xdata(), np.arange(1, TIME - CONTEXT + 1))
        assert (f"best of {SAMPLES}" in fig._suptitle.get_text()) == (protocol == "paper")
    finally:
        plots.plt.close(fig)


def test_kl_bars_are_the_table_per_training_sequence():
    ds = rollout(1)
    fig = plots.plot_kl(ds)
    try:
        heights = [bar.get_height() for bar in fig.axes[0].patches]
        np.testing.assert_allclose(heights, ds.kl_table.values, rtol=1e-6)
        assert fig.axes[0].get_title() == f"KL per training sequence of {SEQ_LEN} frames (Table 1)"
    finally:
        plots.plt.close(fig)
    ds["kl_table"][:] = np.nan  # no whole training sequence in the frames with a KL
    fig = plots.plot_kl(ds)
    try:
        assert "no whole training sequence" in fig.axes[0].texts[0].get_text()
    finally:
        plots.plt.close(fig)
