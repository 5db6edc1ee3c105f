"""`pyro-cwvae evaluate`: the two-run file, its agreement with rollout, FVD windows, the high-level accuracies,
the plot, and refusals.

LPIPS, I3D and the digit classifier are small stand-ins injected through ``Scorers`` (the published networks are
tested against their JAX originals in test_perceptual.py, the classifier in test_classifier.py): each reference
number here is computed from the rollout file of the same run and seed with the metric's own definition.
"""
import json

import numpy as np
import pytest
import torch
import xarray as xr
from torch import nn
from typer.testing import CliRunner

import pyro_cwvae.evaluation.accuracy as accuracy
import pyro_cwvae.prediction.frames as frames
from pyro_cwvae.cli.app import app
from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.digits import digit_pair_accuracy, read_pairs, same_pairs
from pyro_cwvae.evaluation.evaluate import evaluate, summary, write_evaluation
from pyro_cwvae.evaluation.fvd import frechet_distance, i3d_features
from pyro_cwvae.evaluation.rooms import room_categories
from pyro_cwvae.evaluation.scoring import curves
from pyro_cwvae.evaluation.truth import GroundTruth, Scorers
from pyro_cwvae.model.config import Config
from pyro_cwvae.prediction import PredictionOptions, load_run
from pyro_cwvae.prediction.options import FIELDS
from pyro_cwvae.prediction.rollout import rollout
from pyro_cwvae.prediction.scores import PROTOCOLS
from pyro_cwvae.training.loop import fit
from tests.conftest import TINY

CONTEXT, SAMPLES = 4, 2


class StandInLPIPS(nn.Module):
    """Mean squared difference of the two images in [-1, 1]."""

    def forward(self, x0, x1):
        return (x0 - x1).square().mean(dim=(1, 2, 3))


class StandInI3D(nn.Module):
    """Four features of a clip (B, 3, T, 224, 224): a fixed projection of its mean colour and brightness
    changes."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(6, 4)
        nn.init.normal_(self.project.weight, generator=torch.Generator().manual_seed(0))
        nn.init.zeros_(self.project.bias)

    def forward(self, video):
        colour = video.mean(dim=(2, 3, 4))
        motion = (video[:, :, 1:] - video[:, :, :-1]).abs().mean(dim=(2, 3, 4))
        return self.project(torch.cat([colour, motion], 1))


class StandInDigits(nn.Module):
    """Scores (B, 10, 3) from a fixed projection of the 4x4 mean-pooled frame: the pair read changes with the
    frame, like a real classifier's, without training."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(16, 30)
        nn.init.normal_(self.project.weight, std=30.0, generator=torch.Generator().manual_seed(1))
        nn.init.zeros_(self.project.bias)

    def forward(self, frames):
        return self.project(nn.functional.avg_pool2d(frames, 16).flatten(1)).view(-1, 10, 3)


def scorers() -> Scorers:
    return Scorers(StandInLPIPS(), StandInI3D().eval(), StandInDigits().eval())


class Videos(VideoDataset):
    """Generated Moving MNIST test videos cut to given lengths, with no digit labels (as the public archive)."""

    name = "test-videos"

    def __init__(self, lengths=(50, 50, 30), channels=1):
        self.channels = channels
        self.generator = GeneratedMovingMNIST(test_length=max(lengths))
        self.videos = [self.colour(self.generator.test_video(i)[:n]) for i, n in enumerate(lengths)]

    def colour(self, video):
        """RGB videos: the digits on a red background that turns green halfway, as if the agent changed rooms."""
        if self.channels == 1:
            return video
        red = np.arange(len(video)) < len(video) // 2
        background = np.where(red[:, None], [200, 30, 30], [30, 200, 30])[:, :, None, None]
        return np.maximum(video, background).astype(np.uint8)

    def train_batch(self, step, batch_size, seq_len, seed):
        return self.colour(self.generator.train_batch(step, batch_size, seq_len, seed)[:, :seq_len].reshape(
            -1, 1, 64, 64)).reshape(batch_size, seq_len, self.channels, 64, 64)

    @property
    def num_test(self):
        return len(self.videos)

    def test_video(self, index):
        return self.videos[index]


class LabelledVideos(Videos):
    """Videos whose digit labels are known, as the generator's are."""

    def test_labels(self, index):
        return self.generator.test_labels(index)


def train_run(path, **changes) -> str:
    cfg = Config(**{**TINY, "steps": 2, **changes}, run_dir=str(path))
    fit(cfg, Videos(channels=cfg.channels), progress=False)
    return cfg.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 1-level and a 2-level tiny run, two training steps each."""
    root = tmp_path_factory.mktemp("runs")
    return [train_run(root / "one-level", levels=1), train_run(root / "two-level", levels=2)]


def run_evaluate(run_dirs, data, **options):
    """``evaluate`` of 3 sequences, ``SAMPLES`` samples after ``CONTEXT`` frames, 40-frame FVD windows."""
    options = {**dict(sequences=3, context=CONTEXT, samples=SAMPLES, fvd_window=40), **options}
    predicting = PredictionOptions(**{key: value for key, value in options.items() if key in FIELDS})
    rest = {key: value for key, value in options.items() if key not in FIELDS}
    return evaluate(run_dirs, predicting, dataset=data, scorers=scorers(), progress=False, **rest)


@pytest.fixture(scope="module")
def standard(runs):
    """Both runs under the standard protocol (LPIPS on the saved frames), decoded 2 frames a chunk so the chunks
    straddle the FVD windows."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(frames, "DECODE_CHUNK", 2 * SAMPLES * 3)
        return run_evaluate(runs, Videos(), protocol="standard", particles=2)


def roll(run_dir, data, protocol, horizon=46):
    options = PredictionOptions(horizon=horizon, context=CONTEXT, samples=SAMPLES, sequences=3, protocol=protocol)
    return rollout(load_run(run_dir, "cpu"), options, dataset=data)


def per_time_mean(values: np.ndarray) -> np.ndarray:
    """Mean over every axis but the last (time) of the finite values; NaN where none is."""
    values = values.reshape(-1, values.shape[-1])
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore"):
        return np.where(finite, values, 0).sum(0) / finite.sum(0)


def test_two_run_file_has_the_dimensions_and_variables(standard, runs, tmp_path):
    path = write_evaluation(standard, tmp_path / "eval.nc")
    with xr.open_dataset(path) as ds:
        assert list(ds.run.values) == ["one-level", "two-level"]
        assert ds.sizes["time"] == 50 and int(ds.is_context.sum()) == CONTEXT  # to the end of the longest video
        for name in ("ssim", "psnr", "lpips", "digit_accuracy"):
            assert ds[name].dims == ("run", "time"), name
            for baseline in ("last_frame", "random_frame"):
                assert ds[f"{name}_{baseline}"].dims == ("time",)
        assert ds.fvd.dims == ("run", "window") and ds.fvd_horizon.dims == ("run",)
        np.testing.assert_array_equal(ds.window_start, [4, 44])
        np.testing.assert_array_equal(ds.window_stop, [44, 50])
        assert np.isfinite(ds.fvd[:, 0]).all() and np.isnan(ds.fvd[:, 1]).all()  # 6 frames make no clip
        assert ds.kl_table.dims == ("run", "level") and list(ds.level.values) == [1, 2]
        assert np.isnan(ds.kl_table.sel(run="one-level", level=2)) and np.isfinite(ds.kl_table[1]).all()
        assert ds.iwae.dims == ("run", "sequence") and (ds.iwae >= ds.elbo - 1e-4).all()
        configs = json.loads(ds.attrs["configs"])
        assert [configs[name]["levels"] for name in ds.run.values] == [1, 2]
        assert ds.attrs["protocol"] == "standard" and "pyro-ppl" in ds.attrs["versions"]
        assert "mean over 2 sample(s)" in ds.lpips.attrs["aggregation"]
        assert "digit_accuracy_truth" not in ds  # no labels: they are read from the true frames
    assert summary(standard).splitlines()[0].startswith("one-level: psnr ")
    no_table = standard.assign(kl_table=standard.kl_table * np.nan)  # no whole training sequence was scored
    assert "; KL per level (nats per training sequence) none: the frames scored hold" in summary(no_table)


def test_per_time_numbers_equal_the_rollouts(runs):
    data = Videos()
    evaluated = run_evaluate(runs, data, perceptual=False)
    for run_dir, name in zip(runs, ("one-level", "two-level")):
        rolled = roll(run_dir, data, "paper")
        for metric in ("psnr", "ssim"):
            np.testing.assert_allclose(evaluated[metric].sel(run=name), per_time_mean(rolled[f"{metric}_best"].values),
                                       rtol=1e-6)
            for baseline in ("last_frame", "random_frame"):
                np.testing.assert_allclose(evaluated[f"{metric}_{baseline}"],
                                           per_time_mean(rolled[f"{metric}_{baseline}"].values), rtol=1e-6)
        np.testing.assert_allclose(evaluated.kl_table.sel(run=name).dropna("level"), rolled.kl_table, rtol=1e-6)
    assert "lpips" not in evaluated and "fvd" not in evaluated and evaluated.attrs["perceptual"] == 0


def test_lpips_and_digit_accuracy_are_those_of_the_rollout_frames(standard, runs):
    data = Videos()
    for run_dir, name in zip(runs, ("one-level", "two-level")):
        rolled = roll(run_dir, data, "standard")
        prediction = rolled.prediction.values / 255.0
        truth = rolled.truth.values / 255.0
        squared = ((2 * prediction - 1) - (2 * truth - 1)) ** 2  # the stand-in LPIPS on one grey channel
        lpips = np.where(rolled.has_truth.values, squared.mean(axis=(-3, -2, -1)), np.nan)
        np.testing.assert_allclose(standard.lpips.sel(run=name), per_time_mean(lpips), rtol=1e-5)
        net = StandInDigits().eval()
        labels = read_pairs(net, rolled.truth.values.reshape(-1, 1, 64, 64)).view(3, 50, 2)
        correct = digit_pair_accuracy(rolled.prediction.values, labels, net).astype(float)
        correct[:, ~rolled.has_truth.values] = np.nan
        np.testing.assert_allclose(standard.digit_accuracy.sel(run=name), per_time_mean(correct), rtol=1e-6)
        assert 0 < float(standard.digit_accuracy.sel(run=name).mean()) < 1  # the stand-in reads varied pairs


def test_fvd_compares_16_frame_clips_of_each_window(standard, runs):
    rolled = roll(runs[1], Videos(), "standard")
    net = StandInI3D().eval()

    def features(videos):  # (rows, 50, C, 64, 64): the two 16-frame clips of window 4..43, where the video has them
        clips = torch.from_numpy(np.stack([videos[:, 4:20], videos[:, 20:36]], 1).reshape(-1, 16, 1, 64, 64))
        return i3d_features(clips, net).view(len(videos), 2, -1)

    has = rolled.has_truth.values[:, [19, 35]]  # the third video ends at frame 30: its second clip is left out
    predicted = features(rolled.prediction.values.reshape(-1, 50, 1, 64, 64))[np.tile(has, (SAMPLES, 1))]
    true = features(rolled.truth.values)[has]
    want = frechet_distance(predicted, true)
    assert float(standard.fvd.sel(run="two-level", window=0)) == pytest.approx(want, rel=1e-4)
    assert float(standard.fvd_horizon.sel(run="two-level")) == pytest.approx(want, rel=1e-4)  # the only clips
    assert float(standard.fvd_last_frame[0]) > 0 and np.isfinite(standard.fvd_horizon_random_frame)


def test_best_of_n_picks_the_lowest_lpips_and_the_highest_psnr():
    has_truth = np.ones((2, 5), bool)
    has_truth[1, 4] = False
    test = GroundTruth(np.zeros((2, 5, 1, 64, 64), np.uint8), has_truth, context=1, protocol=PROTOCOLS["paper"])
    low, high = np.full((2, 5), 0.1), np.full((2, 5), 0.5)  # per sample: (sequence, time)
    high[:, 0] = 0.0  # context frames do not rank the samples
    scores = np.stack([high, low]).reshape(4, 5)  # samples x sequences, sample-major
    result = curves({"lpips": scores, "psnr": scores, "digit_accuracy": scores}, test, samples=2)
    np.testing.assert_allclose(result["lpips"], [0.1] * 5)
    np.testing.assert_allclose(result["psnr"], [0.0, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(result["digit_accuracy"], [0.05, 0.3, 0.3, 0.3, 0.3])  # a mean, not a best


def test_known_digit_labels_give_the_classifiers_ceiling(runs):
    data = LabelledVideos(lengths=(30, 30, 30))
    ds = run_evaluate(runs[:1], data, perceptual=False)
    truth = torch.from_numpy(np.stack(data.videos))
    labels = torch.from_numpy(np.stack([data.test_labels(n) for n in range(3)]))
    read = read_pairs(StandInDigits().eval(), truth.reshape(-1, 1, 64, 64)).view(3, 30, 2)
    np.testing.assert_allclose(ds.digit_accuracy_truth, same_pairs(read, labels[:, None]).float().mean(0))
    assert ds.digit_accuracy.attrs["labels"] == "the digits the generator drew"


def test_room_accuracy_of_an_rgb_run_is_that_of_its_rollout(tmp_path):
    run_dir = train_run(tmp_path / "gqn", dataset="gqn", channels=3)
    data = Videos(lengths=(40, 40, 40), channels=3)
    ds = run_evaluate([run_dir], data, perceptual=False, protocol="standard")
    assert "digit_accuracy" not in ds and ds.room_accuracy.dims == ("run", "time")
    rolled = roll(run_dir, data, "paper", horizon=36)
    correct = room_categories(rolled.prediction.values) == room_categories(rolled.truth.values)[None]
    np.testing.assert_allclose(ds.room_accuracy[0], correct.mean(axis=(0, 1)), rtol=1e-6)
    # The last context frame shown throughout stays in the first room while the truth moves on.
    assert ds.room_accuracy_last_frame[CONTEXT] == 1 and ds.room_accuracy_last_frame[-1] == 0


def test_runs_on_different_data_are_refused(runs, tmp_path):
    rgb = train_run(tmp_path / "rgb", dataset="gqn", channels=3)
    with pytest.raises(UserError, match="trained on different data"):
        run_evaluate([runs[0], rgb], Videos())
    result = CliRunner().invoke(app, ["evaluate", runs[0], rgb, "--no-perceptual", "--quiet"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "error: the runs were trained on different data" in result.output


@pytest.mark.parametrize("option, message", [(dict(particles=-1), "--particles"), (dict(fvd_window=0), "at least 1"),
                                             (dict(protocol="best"), "--protocol")])


def test_bad_options_are_refused_before_any_work(runs, option, message):
    with pytest.raises(UserError, match=message):
        run_evaluate(runs, Videos(), **option)


def test_cli_writes_the_file_and_plot_draws_it(runs, tmp_path, monkeypatch):
    monkeypatch.setattr(accuracy, "digit_classifier", lambda *args, **kwargs: StandInDigits().eval())
    monkeypatch.setattr(GeneratedMovingMNIST, "__init__", short_test_videos(GeneratedMovingMNIST.__init__))
    out = tmp_path / "eval.nc"
    result = CliRunner().invoke(app, ["evaluate", *runs, "--out", str(out), "--sequences", "2", "--context", "4",
                                      "--horizon", "12", "--no-perceptual", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "one-level: psnr" in result.output and "random frame:" in result.output
    result = CliRunner().invoke(app, ["plot", str(out), "--out", str(tmp_path / "figures")])
    assert result.exit_code == 0, result.output
    figure = tmp_path / "figures" / "evaluation.png"
    assert figure.stat().st_size > 10_000


def short_test_videos(init):
    """The generator's ``__init__`` with 30-frame test videos: the command stays quick."""
    def short(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "test_length": 30})
    return short


def test_too_few_clips_for_a_frechet_distance_are_named_in_a_warning(runs):
    """One sequence of 16 predicted frames is one I3D clip: FVD stays NaN, and says why."""
    with pytest.warns(UserWarning, match=r"FVD is NaN: .* 1 sequence\(s\) give 1; ask for more --sequences"):
        ds = run_evaluate([runs[0]], Videos(), sequences=1, horizon=16)
    assert np.isnan(ds.fvd_horizon.values).all() and np.isfinite(ds.psnr.where(~ds.is_context).mean())


def test_runs_that_read_their_data_from_different_places_say_whose_test_videos_score_them(runs, tmp_path):
    elsewhere = train_run(tmp_path / "elsewhere", data_dir="somewhere/mmnist")
    options = PredictionOptions(sequences=1, context=CONTEXT, horizon=4, samples=1)
    with pytest.warns(UserWarning, match=r"from different places \(one-level: generated on the fly \(seed 0\), "
                                         r"elsewhere: /.*/somewhere/mmnist\); all are scored on the test videos of "
                                         r"the first, one-level"):
        evaluate([runs[0], elsewhere], options, perceptual=False, scorers=scorers(), progress=False)


def test_the_summary_averages_every_curve_over_the_predicted_frames_only():
    """A file written by hand: 0 on the two context frames and 10 (or 0.5) on the three predicted ones, for the
    run, both baselines and the classifier on the true frames; every number the summary prints is the latter."""
    time, context = np.arange(5), np.array([True, True, False, False, False])

    def curve(predicted: float, dims=("time",)) -> tuple:
        values = np.where(context, 0.0, predicted)
        return dims, values[None] if dims[0] == "run" else values

    ds = xr.Dataset({"is_context": ("time", context), "kl_table": (("run", "level"), [[1.0, 2.0]]),
                     "psnr": curve(10.0, ("run", "time")), "digit_accuracy": curve(0.5, ("run", "time")),
                     "digit_accuracy_truth": curve(0.75)}
                    | {f"{name}_{base}": curve(value) for base in ("last_frame", "random_frame")
                       for name, value in (("psnr", 10.0), ("digit_accuracy", 0.5))},
                    coords={"run": ["a"], "time": time, "level": [1, 2]})
    lines = summary(ds).splitlines()
    assert lines[0] == "a: psnr 10.000, digit_accuracy 0.500; KL per level (nats per training sequence) 1.0, 2.0"
    assert lines[1:3] == ["last frame: psnr 10.000, digit_accuracy 0.500",
                          "random frame: psnr 10.000, digit_accuracy 0.500"]
    assert lines[3] == "digit_accuracy on the true frames (a perfect prediction's): 0.750"


def test_the_predicted_frames_are_the_videos_frames_after_the_context():
    """What the best of N ranks and the summary averages, written out by hand: frames 2.. of each video, up to its
    end."""
    has_truth = np.array([[True] * 5, [True] * 4 + [False]])
    test = GroundTruth(truth=np.zeros((2, 5, 1, 64, 64), np.uint8), has_truth=has_truth, context=2,
                       protocol=PROTOCOLS["paper"])
    assert test.predicted.tolist() == [[False, False, True, True, True], [False, False, True, True, False]]
