"""Watching a run as it trains: previews and TensorBoard logging change nothing that is learned, previews land at
their steps with the values a rollout computes independently, and TensorBoard's own event reader reads back
history.nc's values under the documented tags."""
import io
import random
import sys

import numpy as np
import pytest
import torch
import xarray as xr
from PIL import Image, ImageSequence
from tensorboard.backend.event_processing import event_accumulator  # the test extra installs it

from pyro_cwvae import api
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.training.history import HISTORY, History
from pyro_cwvae.training.loop import fit
from pyro_cwvae.training import watching
from pyro_cwvae.training.watching import Watcher
from pyro_cwvae.watch import Previews, TensorBoardLog, watchers_for
from pyro_cwvae.watch.images import preview_strip, preview_video
from pyro_cwvae.watch.preview import SEQUENCES
from pyro_cwvae.watch.tensorboard import tensorboard_for


CONTEXT = 4


@pytest.fixture(autouse=True)
def no_cached_classifier(tmp_path, monkeypatch):
    """An empty weights cache: previews of Moving MNIST read digits only with a cached classifier."""
    monkeypatch.setenv("PYRO_CWVAE_WEIGHTS", str(tmp_path / "weights"))


@pytest.fixture
def data():
    return GeneratedMovingMNIST(test_length=40)  # short test videos: a preview needs 4 + 3 top steps


@pytest.fixture
def cfg(tiny_cfg):
    return tiny_cfg.replace(steps=6, checkpoint_every=3, context=CONTEXT, preview_every=2, tensorboard="on")


class Meddler(Watcher):
    """A watcher that draws from every random stream and leaves the networks in training mode: what the loop must
    keep from reaching the training."""

    def wants(self, step):
        return True

    def after_step(self, step, nets):
        torch.rand(3), random.random(), np.random.rand()
        nets.train()
        return None


def weights(result) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in result.nets.state_dict().items()}


def read_events(run_dir):
    accumulator = event_accumulator.EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    return accumulator.Reload()


def test_watchers_leave_the_weights_and_losses_bit_identical(cfg, data, tmp_path):
    plain = fit(cfg.replace(run_dir=str(tmp_path / "plain"), preview_every=0), data, progress=False)
    watched_cfg = cfg.replace(run_dir=str(tmp_path / "watched"))
    watchers = watchers_for(watched_cfg, data, say=None) + [Meddler()]
    watched = fit(watched_cfg, data, progress=False, watchers=watchers)
    assert [type(w).__name__ for w in watchers[:2]] == ["TensorBoardLog", "Previews"]
    plain_weights, watched_weights = weights(plain), weights(watched)
    assert all(torch.equal(plain_weights[name], watched_weights[name]) for name in plain_weights)
    assert [row.loss for row in plain.history.rows] == [row.loss for row in watched.history.rows]
    assert [step for step, _ in watched.history.previews] == [2, 4, 6]


@pytest.mark.parametrize("training", [True, False])
def test_a_watcher_runs_in_eval_mode_without_grad_and_leaves_the_mode_as_it_was(training):
    class Looker(Watcher):
        def wants(self, step):
            return True

        def after_step(self, step, nets):
            seen.append((nets.training, nets[0].training, torch.is_grad_enabled()))

    seen, nets = [], torch.nn.Sequential(torch.nn.Dropout(0.5)).train(training)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    watching.Watching([Looker()], History(1), optimizer, start=0, programs=None).after_step(1, nets)
    assert seen == [(False, False, False)]
    assert nets.training == nets[0].training == training and torch.is_grad_enabled()


def test_without_the_loops_protection_a_meddling_watcher_would_change_the_training(cfg, data, tmp_path,
                                                                                   monkeypatch):
    """The test above can fail: with the random states not put back, the same watcher changes the weights."""
    from contextlib import nullcontext

    plain = fit(cfg.replace(run_dir=str(tmp_path / "plain"), preview_every=0), data, progress=False)
    monkeypatch.setattr(watching, "untouched", lambda nets: nullcontext())
    meddled = fit(cfg.replace(run_dir=str(tmp_path / "meddled"), preview_every=0), data, progress=False,
                  watchers=[Meddler()])
    assert any(not torch.equal(a, b) for a, b in zip(weights(plain).values(), weights(meddled).values()))


def test_previews_land_at_their_steps_with_the_values_of_an_independent_rollout(cfg, data, tmp_path):
    cfg = cfg.replace(run_dir=str(tmp_path / "run"), tensorboard="off")
    said = []
    fit(cfg, data, progress=False, watchers=watchers_for(cfg, data, say=said.append))
    ds = xr.open_dataset(tmp_path / "run" / HISTORY).load()
    assert ds.preview_step.values.tolist() == [2, 4, 6]
    names = {"psnr", "ssim", "psnr_last_frame", "ssim_last_frame", "psnr_random_frame", "ssim_random_frame"}
    assert {name for name in ds.data_vars if name.startswith("preview_")} == {f"preview_{n}" for n in names}
    assert all(ds[f"preview_{n}"].attrs["long_name"] and ds[f"preview_{n}"].attrs["units"] for n in names)
    assert np.ptp(ds.preview_ssim_last_frame.values) == 0  # the baselines do not train
    # At the last step, the checkpoint's weights: the preview equals a rollout of the saved run with its options.
    horizon = 3 * cfg.clock.top_period
    rollout = api.rollout(str(tmp_path / "run"), horizon=horizon, samples=1, sequences=SEQUENCES, seed=0,
                          context=CONTEXT, dataset=data)
    predicted = ~rollout.is_context
    for metric in ("psnr", "ssim", "psnr_last_frame", "ssim_random_frame"):
        expected = float(rollout[metric].where(predicted).mean())
        assert ds[f"preview_{metric}"].values[-1] == pytest.approx(expected, rel=1e-5)
    assert said[0].startswith("previews without digit accuracy: no digit classifier is cached")
    assert [line.split(":")[0] for line in said[1:]] == [f"preview at step {step}" for step in (2, 4, 6)]


def test_previews_read_the_digits_with_a_classifier(cfg, data, tmp_path):
    from tests.test_evaluate import StandInDigits

    cfg = cfg.replace(run_dir=str(tmp_path / "run"), tensorboard="off", steps=2)
    result = fit(cfg, data, progress=False, watchers=[Previews(cfg, data, classifier=StandInDigits().eval(), say=None)])
    ((step, values),) = result.history.previews
    accuracies = [values[f"digit_accuracy{kind}"] for kind in ("", "_last_frame", "_random_frame")]
    assert step == 2 and all(0 <= value <= 1 for value in accuracies)
    assert "pair of digits" in result.history.preview_attrs["digit_accuracy"]["long_name"]


def test_tensorboard_reads_back_the_history_under_the_documented_tags_across_a_resume(cfg, data, tmp_path):
    cfg = cfg.replace(run_dir=str(tmp_path / "run"), steps=4, checkpoint_every=2)
    fit(cfg, data, progress=False, watchers=watchers_for(cfg, data, say=None))
    longer = cfg.replace(steps=8)  # resumed: a second event file, the curves go on
    fit(longer, data, resume=True, progress=False, watchers=watchers_for(longer, data, say=None))
    events = read_events(tmp_path / "run")
    history = xr.open_dataset(tmp_path / "run" / HISTORY).load()
    expected = {"train/loss": history.loss, "train/reconstruction": history.reconstruction,
                "train/grad_norm": history.grad_norm, "train/kl_scale": history.kl_scale,
                "kl/level_1": history.kl.sel(level=1), "kl/level_2": history.kl.sel(level=2),
                "kl/share_above_level_1": 100 * history.kl.sel(level=2) / history.kl.sum("level")}
    expected.update({f"preview/{name[len('preview_'):]}": history[name]
                     for name in history.data_vars if name.startswith("preview_")})
    scalar_tags = set(events.Tags()["scalars"])
    assert set(expected) | {"speed/steps_per_second", "train/learning_rate"} == scalar_tags
    for tag, values in expected.items():
        logged = events.Scalars(tag)
        assert [event.step for event in logged] == values[values.dims[0]].values.tolist(), tag
        np.testing.assert_allclose([event.value for event in logged], values.values, rtol=1e-6, err_msg=tag)
    # Once per log, at its last step: here every save (every 2 steps) logs.
    saves = list(range(cfg.checkpoint_every, longer.steps + 1, cfg.checkpoint_every))
    for tag in ("train/learning_rate", "speed/steps_per_second"):
        assert [event.step for event in events.Scalars(tag)] == saves, tag
    assert [event.value for event in events.Scalars("train/learning_rate")] == pytest.approx([cfg.lr] * 4)
    assert all(event.value > 0 for event in events.Scalars("speed/steps_per_second"))
    # The resumed run kept the previews of its checkpoint and went on.
    assert history.preview_step.values.tolist() == [2, 4, 6, 8]
    saved = History.load(tmp_path / "run" / HISTORY, cfg.levels, upto_step=5)
    assert [step for step, _ in saved.previews] == [2, 4] and saved.preview_attrs["ssim"]["units"] == "1"


def test_a_preview_shows_a_strip_and_a_video_in_tensorboard(cfg, data, tmp_path):
    cfg = cfg.replace(run_dir=str(tmp_path / "run"), steps=2)
    fit(cfg, data, progress=False, watchers=watchers_for(cfg, data, say=None))
    events = read_events(tmp_path / "run")
    assert set(events.Tags()["images"]) == {"preview/strip", "preview/video"}
    (strip,) = events.Images("preview/strip")
    (video,) = events.Images("preview/video")
    assert strip.step == video.step == 2
    frames = CONTEXT + 3 * cfg.clock.top_period
    with Image.open(io.BytesIO(strip.encoded_image_string)) as image:
        assert image.height == 2 * SEQUENCES * 64 + (2 * SEQUENCES - 1) * 2 + (SEQUENCES - 1) * 6  # truth, model
        assert image.width == (4 * 64 + 3 * 2) + 12 + (6 * 64 + 5 * 2)  # the 4 context frames, a gap, 6 predicted
    with Image.open(io.BytesIO(video.encoded_image_string)) as gif:
        assert gif.format == "GIF" and gif.n_frames == frames and (gif.width, gif.height) == (video.width,
                                                                                             video.height)


def test_an_overwritten_run_starts_its_tensorboard_curves_afresh(cfg, data, tmp_path):
    cfg = cfg.replace(run_dir=str(tmp_path / "run"), steps=2, preview_every=0)
    for _ in range(2):
        fit(cfg, data, progress=False, watchers=watchers_for(cfg, data, say=None))
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1
    assert [event.step for event in read_events(tmp_path / "run").Scalars("train/loss")] == [1, 2]


def test_tensorboard_modes(cfg, data, monkeypatch):
    assert isinstance(tensorboard_for(cfg.replace(tensorboard="auto")), TensorBoardLog)
    assert tensorboard_for(cfg.replace(tensorboard="off")) is None
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as without the package: ImportError
    said = []
    assert tensorboard_for(cfg.replace(tensorboard="auto"), say=said.append) is None
    assert len(said) == 1 and "pyro-cwvae[tensorboard]" in said[0]
    with pytest.raises(UserError, match=r"--tensorboard on needs the tensorboard package"):
        tensorboard_for(cfg)
    with pytest.raises(UserError, match="--tensorboard must be one of auto, on, off"):
        cfg.replace(tensorboard="yes").validate()


def test_previews_the_data_cannot_give_are_left_out_with_a_warning(cfg, data):
    with pytest.raises(UserError, match=r"previews: .*context.*--preview-every 0 turns them off"):
        Previews(cfg.replace(context=41), data)
    said = []
    assert watchers_for(cfg.replace(context=41, tensorboard="off"), data, say=said.append) == []
    assert len(said) == 1 and said[0].startswith("warning: training without previews: --context 41 is longer")
    assert watchers_for(cfg.replace(preview_every=0, tensorboard="off"), data) == []
    assert watchers_for(cfg.replace(preview_every=7, tensorboard="off"), data) == []  # no step reaches a preview


def coded_frames(videos: int, times: int) -> tuple[np.ndarray, np.ndarray]:
    """Truth and model frames ``(videos, times, 1, 64, 64)``, each a flat level that says which it is (``decode``),
    with one white pixel in its top row, 5 pixels in: a tile turned or flipped shows it elsewhere."""
    level = 2 + 100 * np.arange(videos)[:, None] + 2 * np.arange(times)[None]
    truth, model = (np.broadcast_to((level + kind)[..., None, None, None], (videos, times, 1, 64, 64)).astype(np.uint8)
                    for kind in (0, 1))
    for frames in (truth, model):
        frames[..., 0, 5] = 255
    return truth, model


def decode(level: int) -> tuple[int, int, str]:
    """(video, time, "truth" or "model") of a tile of ``coded_frames``."""
    video, rest = divmod(int(level) - 2, 100)
    return video, rest // 2, ("truth", "model")[rest % 2]


def tiles(image: np.ndarray) -> dict[tuple[int, int], tuple[int, int, str]]:
    """Every 64x64 frame in ``image`` (H, W): its top-left corner -> what it shows, after checking its orientation.
    A frame's levels lie strictly between black and white, which the layout's gaps and bars use."""
    from scipy import ndimage

    found = {}
    labels, _ = ndimage.label((image > 0) & (image < 255))
    for box in ndimage.find_objects(labels):
        top, left = box[0].start, box[1].start
        assert (box[0].stop - top, box[1].stop - left) == (64, 64)
        assert image[top, left + 5] == 255 and image[top + 5, left] != 255  # not turned, not flipped
        found[top, left] = decode(np.median(image[box]))
    return found


def test_a_preview_strip_shows_truth_above_the_model_then_the_predictions():
    videos, times, context = 2, 40, 10
    truth, model = coded_frames(videos, times)
    shown = tiles(preview_strip(truth, model, context)[..., 0])
    tops, lefts = sorted({top for top, _ in shown}), sorted({left for _, left in shown})
    assert len(shown) == len(tops) * len(lefts)  # a full grid
    rows = [[shown[top, left] for left in lefts] for top in tops]
    assert [row[0][0::2] for row in rows] == [(0, "truth"), (0, "model"), (1, "truth"), (1, "model")]
    columns = [rows[0][j][1] for j in range(len(lefts))]
    assert all(row[j][1] == columns[j] for row in rows for j in range(len(lefts)))  # the same time down a column
    assert columns == sorted(set(columns))
    seen, predicted = [t for t in columns if t < context], [t for t in columns if t >= context]
    assert seen[-1] == context - 1 and predicted[0] == context and predicted[-1] == times - 1
    gaps, between = np.diff(lefts), len(seen) - 1  # the context's columns set apart from the predictions'
    assert gaps[between] > np.delete(gaps, between).max()


def test_a_preview_video_marks_the_context_frames_under_the_model():
    videos, times, context = 2, 16, 5
    truth, model = coded_frames(videos, times)
    with Image.open(io.BytesIO(preview_video(truth, model, context))) as gif:
        frames = [np.array(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == times
    for t, frame in enumerate(frames):
        shown = tiles(frame)
        by_place = [shown[place] for place in sorted(shown)]  # rows, then truth left of model
        assert by_place == [(v, t, kind) for v in range(videos) for kind in ("truth", "model")]
        bar_under = {"truth": frame[-1, 0] == 0, "model": frame[-1, -1] == 0}
        assert bar_under == {"truth": False, "model": t < context}, t
