"""The experiment scripts end to end at a tiny budget: the files they write have the schema their docs promise."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from pyro import poutine
from torch.distributions import kl_divergence

from experiments import baselines, common, content, diagnose, factor, levels, prior_means, probe, speed
from pyro_cwvae.evaluation import digits as classifier
from pyro_cwvae.evaluation.accuracy import DigitAccuracy
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.errors import UserError
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.training.loop import fit


def test_diagnose_writes_the_kl_of_each_setting_against_the_step(tmp_path, capsys):
    diagnose.main(["--settings", "demo,beta-top", "--budget", "2", "--out", str(tmp_path), "--quiet", "--tiny"])
    with xr.open_dataset(tmp_path / "diagnose.nc") as results:
        assert list(results.setting.values) == ["demo", "beta-top"]
        assert results.kl.dims == ("setting", "step", "level")
        assert list(results.step.values) == [1, 2] and list(results.level.values) == [1, 2, 3]
        assert np.isfinite(results.kl.values).all() and (results.kl.values > 0).all()
    assert (tmp_path / "diagnose.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| beta-top |" in table and "share above 1" in table


def test_an_experiment_runs_as_a_module_and_refuses_bad_input_in_one_line():
    done = subprocess.run([sys.executable, "-m", "experiments.diagnose", "--settings", "demo,nope"],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    expected = "error: unknown setting(s) nope: choose from " + ", ".join(diagnose.SETTINGS)
    assert done.stderr.strip().splitlines() == [expected]


def test_diagnose_resumes_a_setting_to_a_larger_budget(tmp_path):
    diagnose.main(["--settings", "demo", "--budget", "1", "--out", str(tmp_path), "--quiet", "--tiny"])
    first = xr.open_dataset(tmp_path / "diagnose.nc").load()
    diagnose.main(["--settings", "demo", "--budget", "2", "--out", str(tmp_path), "--quiet", "--tiny"])
    with xr.open_dataset(tmp_path / "diagnose.nc") as second:
        assert list(second.step.values) == [1, 2]
        np.testing.assert_array_equal(second.kl.sel(step=1).values, first.kl.sel(step=1).values)


# The paper's analyses. The smoke tests share one output folder, as the scripts share runs in one --out:
# a model that two experiments ask for (CW-VAE with 3 levels and k 6) trains once.

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("experiments")


def run(script, out, *options):
    script.main(["--tiny", "--budget", "2", "--out", str(out), "--quiet", *options])
    assert (out / f"{script.__name__.rsplit('.', 1)[-1]}-tiny.png").read_bytes()[:8] == PNG
    return xr.open_dataset(out / f"{script.__name__.rsplit('.', 1)[-1]}-tiny.nc")


def test_settings_that_train_the_same_model_share_one_run():
    cpu, paper = common.SCALES["cpu"], common.SCALES["paper"]
    assert common.run_name(cpu, {"levels": 3, "factor": 6}) == common.run_name(cpu, {"speed": 1.0}) == "cpu/demo"
    assert common.run_name(cpu, {"levels": 1}) == "cpu/demo_levels1"
    assert common.run_name(cpu, {"levels": 4, "factor": 4, "seq_len": 64}) == "cpu/demo_factor4_levels4_seq-len64"
    assert common.run_name(paper, {"speed": 0.5}) == "paper/mmnist_speed0.5"


def test_ink_centre_is_the_intensity_weighted_mean_pixel():
    frames = np.zeros((3, 1, 64, 64), dtype=np.uint8)
    frames[0, 0, 5, 7] = 200
    frames[1, 0, 10, 20] = frames[1, 0, 30, 60] = 100  # two equal pixels: their midpoint
    centre = common.ink_centre(frames)
    np.testing.assert_allclose(centre[:2], [[5, 7], [20, 40]])
    assert np.isnan(centre[2]).all()  # a blank frame has no centre


class LabelledPixels:
    """Test data: sequence n shows digits (n, n + 1); a frame is one pixel, its column the first digit shown."""

    def test_labels(self, n):
        return np.array([n, n + 1])

    def train_batch(self, step, batch_size, seq_len, seed):
        frames = np.zeros((batch_size, seq_len, 1, 64, 64), dtype=np.uint8)
        frames[..., 0, 9] = 255
        return frames


class ReadsColumn(DigitAccuracy):
    """The package's digit accuracy with a classifier of LabelledPixels: it reads the pair (x, x + 1) from a frame's
    lit column x."""

    def __init__(self):
        super().__init__(classifier=None)

    def read(self, frames):
        column = frames.reshape(*frames.shape[:2], -1).argmax(-1) % 64
        return np.stack([column, column + 1], axis=-1)


def test_content_measures_read_each_frame_against_its_sequence_and_time():
    S, N, T, context = 2, 2, 3, 2
    truth = np.zeros((N, T, 1, 64, 64), dtype=np.uint8)
    prediction = np.zeros((S, N, T, 1, 64, 64), dtype=np.uint8)
    for n in range(N):
        for t in range(T):
            truth[n, t, 0, 10 + t, n] = 255
            for s in range(S):  # sample 0 is right; sample 1 one pixel down and right: wrong digits
                prediction[s, n, t, 0, 10 + t + s, n + s] = 255
    has_truth = np.ones((N, T), dtype=bool)
    has_truth[1, 2] = False
    rollout = xr.Dataset({"prediction": (("sample", "sequence", "time", "channel", "y", "x"), prediction),
                          "truth": (("sequence", "time", "channel", "y", "x"), truth),
                          "has_truth": (("sequence", "time"), has_truth)}, attrs={"context": context})
    ds = common.with_content_measures(rollout, LabelledPixels(), ReadsColumn(), seed=0)

    measured = np.where(has_truth, 1.0, np.nan)  # no true frame, no measure
    right = np.array([1.0, 0.0])[:, None, None]  # of each sample
    np.testing.assert_array_equal(ds.digit_accuracy.values, right * measured)
    np.testing.assert_allclose(ds.position_error.values, np.sqrt(2) * (1 - right) * measured)
    np.testing.assert_array_equal(ds.digit_accuracy_truth.values, measured)
    t, n = np.meshgrid(np.arange(T), np.arange(N))
    np.testing.assert_allclose(ds.position_error_last_frame.values, np.abs(t - (context - 1)) * measured)
    np.testing.assert_array_equal(ds.digit_accuracy_random_frame.values, 0 * measured)
    np.testing.assert_allclose(ds.position_error_random_frame.values, np.hypot(10 + t, n - 9) * measured)
    assert "prediction" not in ds and ds.example_prediction.dims == ("sample", "time", "channel", "y", "x")
    np.testing.assert_array_equal(ds.example_truth.values, truth[0])
    np.testing.assert_array_equal(ds.attrs["digit_labels"], [0, 1, 1, 2])


def test_options_that_cannot_work_are_refused():
    args = common.experiment_parser("x", levels.SETTINGS)
    with pytest.raises(UserError, match="exclude"):
        common.make_plan(args.parse_args(["--paper", "--tiny"]))
    with pytest.raises(UserError, match="at least 1"):
        common.make_plan(args.parse_args(["--horizon", "0"]))
    with pytest.raises(UserError, match="unknown setting"):
        common.chosen_settings(args.parse_args(["--settings", "3-level,5-level"]), levels.SETTINGS)


def test_levels_writes_the_kl_table_of_each_model_beside_the_papers(out, capsys):
    with run(levels, out, "--settings", "1-level,4-level") as results:
        assert results.kl_table.dims == ("setting", "level") and list(results.level.values) == [1, 2, 3, 4]
        kl = results.kl_table.values
        assert np.isfinite(kl[1]).all() and np.isfinite(kl[0, 0]) and np.isnan(kl[0, 1:]).all()
        assert float(results.kl_table_paper.sel(setting="4-level", level=1)) == pytest.approx(397.1)
        assert list(results.trained_steps.values) == [2, 2] and results.attrs["budget"] == 2
    assert "| 4-level |" in capsys.readouterr().out


def test_speed_writes_the_kl_of_each_level_at_each_speed(out, capsys):
    with run(speed, out, "--settings", "normal,faster") as results:
        assert results.kl_table.dims == ("setting", "level") and list(results.speed.values) == [1.0, 2.0]
        assert np.isfinite(results.kl_table.values).all()
    assert "| faster (2x) |" in capsys.readouterr().out


def test_factor_writes_quality_and_digit_accuracy_against_the_horizon(out, capsys):
    with run(factor, out, "--settings", "k8", "--horizon", "3") as results:
        for name in ("ssim_best", "psnr_best", "digit_accuracy", "ssim_last_frame", "digit_accuracy_random_frame"):
            assert results[name].dims == ("setting", "horizon"), name
        assert list(results.horizon.values) == [1, 2, 3]
        assert int(results.context.sel(setting="k8")) == 64  # a whole step of the top level: 8**2 frames
        assert ((results.digit_accuracy >= 0) & (results.digit_accuracy <= 1)).all()
    assert "| k8 | 64 |" in capsys.readouterr().out


def test_baselines_writes_digit_accuracy_of_each_model_against_the_horizon(out, capsys):
    with run(baselines, out, "--settings", "cwvae,rssm", "--horizon", "3") as results:
        assert list(results.setting.values) == ["cwvae", "rssm"]
        assert results.digit_accuracy.dims == ("setting", "horizon") and results.sizes["horizon"] == 3
        assert list(results.trained_steps.values) == [2, 2]
        assert float(results.kl_share_above_1.sel(setting="rssm")) == 0
    assert "| true frames |" in capsys.readouterr().out


def test_content_draws_the_top_levels_from_the_prior(out, capsys):
    with run(content, out, "--horizon", "3") as results:
        assert list(results.prior_levels.values) == [0, 0, 1, 2] and list(results.context.values) == [36, 8, 8, 8]
        for name in ("digit_accuracy", "position_error", "position_error_last_frame"):
            assert results[name].dims == ("setting", "horizon"), name
        assert results.example_prediction.dims == ("setting", "sample", "shown", "channel", "y", "x")
        assert results.example_prediction.dtype == np.uint8 and list(results.shown.values) == [1, 2, 3]
        assert results.attrs["run"] == "tiny/demo"
        # 8 frames hold no whole step of level 3 (36 frames): it comes from the prior with or without prior_levels
        frames = results.example_prediction
        np.testing.assert_array_equal(frames.sel(setting="filtered-8"), frames.sel(setting="top-blind"))
        assert (frames.sel(setting="top-blind") != frames.sel(setting="top-2-blind")).any()
    assert "| top-2-blind | 8 | 2 |" in capsys.readouterr().out


def test_a_rerun_trains_and_rolls_out_nothing_again(out, monkeypatch):
    run(baselines, out, "--settings", "cwvae", "--horizon", "3").close()

    def refuse(*args, **kwargs):
        raise AssertionError("trained or rolled out again")

    monkeypatch.setattr(common, "fit", refuse)
    monkeypatch.setattr(common, "rollout", refuse)
    run(baselines, out, "--settings", "cwvae", "--horizon", "3").close()
    with pytest.raises(UserError, match="differs from the resumed run"):  # a changed setting is not resumed
        common.train("tiny/demo", {"levels": 2}, 2, out, progress=False, tiny=True)


def test_prior_means_replace_every_draw_by_its_mean_but_the_replayed_context(tiny_cfg):
    nets = CWVAENets(tiny_cfg)
    context = poutine.trace(model).get_trace(None, nets, tiny_cfg, num_frames=2, batch_size=2)
    decided = {"s_2_0": context.nodes["s_2_0"]}  # a site the context decided: the rollout replays it
    context.nodes = {name: site for name, site in context.nodes.items() if name in decided}
    means = poutine.replay(prior_means.PriorMeans()(model), trace=context)
    trace = poutine.trace(means).get_trace(None, nets, tiny_cfg, num_frames=8, batch_size=2)
    latents = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name.startswith("s_")]
    assert len(latents) == 8 + 4
    for name in latents:
        site = trace.nodes[name]
        assert torch.equal(site["value"], site["fn"].mean) != (name in decided), name
    assert torch.equal(trace.nodes["s_2_0"]["value"], decided["s_2_0"]["value"])


def test_prior_means_prints_draws_means_and_the_baseline(tiny_cfg, monkeypatch, capsys):
    fit(tiny_cfg.replace(steps=2), GeneratedMovingMNIST(), progress=False)
    net, _ = classifier.train(steps=common.TINY_CLASSIFIER_STEPS, batch_size=4)
    monkeypatch.setattr(prior_means, "digit_classifier", lambda: net)
    prior_means.main([tiny_cfg.run_dir, "--sequences", "2", "--context", "4", "--horizon", "3"])
    predictions, widths = (table.splitlines() for table in capsys.readouterr().out.split("\n\n"))
    assert [line.split("|")[2].strip() for line in predictions[2:]] == ["prior draws", "prior means", "copy last frame"]
    # 4 context frames, k 2: level 1 steps at frames 1, 2, 3 after its first, level 2 at frame 2 (frames 2-3)
    rows = [[cell.strip() for cell in line.split("|")[2:-1]] for line in widths[2:]]
    assert [row[:2] for row in rows] == [["1", "3"], ["2", "1"]]
    for row in rows:  # the KL per step is its two parts
        assert float(row[2]) == pytest.approx(float(row[3]) + float(row[4]), abs=0.11)


def test_the_kl_split_adds_up_to_the_kl_and_names_each_part():
    q = dist.Normal(torch.tensor([[0.0, 1.0, -2.0]]), torch.tensor([[0.5, 1.0, 1.0]]))
    p = dist.Normal(torch.tensor([[0.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 2.0]]))
    width, offset = prior_means.kl_parts(q, p)
    torch.testing.assert_close(width + offset, kl_divergence(q.to_event(1), p.to_event(1)))
    # by hand: the prior is twice as wide in the first and third dimensions (log 2 + 1/8 - 1/2 each), and its mean
    # is 3 from the posterior's in the third, where its std is 2 (9 / 8)
    torch.testing.assert_close(width, torch.tensor([2 * (math.log(2) + 1 / 8 - 1 / 2)]))
    torch.testing.assert_close(offset, torch.tensor([9 / 8]))


def test_probe_reads_pairs_that_are_linear_in_the_features_and_not_noise():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 10, size=(600, 2))
    counts = np.stack([(classes == c).sum(1) for c in range(10)], 1).astype(np.float32)  # (N, 10): 0, 1 or 2
    noise = rng.normal(size=(600, 20)).astype(np.float32)
    informative = np.concatenate([counts + 0.1 * noise[:, :10], noise[:, 10:]], 1)
    for features, lowest, highest in ((informative, 0.9, 1.0), (noise, 0.0, 0.1)):
        read = probe.fit_probe(features[:400], classes[:400])
        accuracy = classifier.same_pairs(read(features[400:]), torch.as_tensor(classes[400:])).float().mean()
        assert lowest <= float(accuracy) <= highest


def test_probe_takes_the_posterior_mean_of_each_levels_last_step(tiny_cfg):
    nets = CWVAENets(tiny_cfg).eval()
    videos, _ = probe.labelled_videos("test", 3, 8, 1.0, seed=0)
    means = probe.posterior_means(nets, guide, tiny_cfg, videos, seed=1)
    assert [m.shape for m in means] == [(3, tiny_cfg.z_size)] * tiny_cfg.levels
    # Level 2 (k 2) steps at frames 0, 2, 4, 6: its last step reads frames 6-7, and the earlier ones through h.
    pyro.set_rng_seed(1)  # the posterior at a step depends on the draws before it
    trace = poutine.trace(guide).get_trace(torch.as_tensor(videos).float() / 255, nets, tiny_cfg)
    changed = videos.copy()
    changed[:, :6] = 0
    np.testing.assert_allclose(means[1], trace.nodes["s_2_6"]["fn"].mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(probe.posterior_means(nets, guide, tiny_cfg, changed)[1], means[1])  # h carries the past


def test_probe_writes_the_accuracy_of_each_level_trained_and_initial(tiny_cfg, tmp_path, capsys):
    fit(tiny_cfg.replace(steps=2), GeneratedMovingMNIST(), progress=False)
    probe.main([tiny_cfg.run_dir, "--fit", "12", "--score", "6", "--context", "4", "--out", str(tmp_path)])
    with xr.open_dataset(tmp_path / "probe.nc") as results:
        for name in ("pair_accuracy", "digit_accuracy"):
            assert results[name].dims == ("run", "network", "level")
            assert ((results[name] >= 0) & (results[name] <= 1)).all() and 0 <= results[name].attrs["chance"] <= 1
        assert list(results.network.values) == ["trained", "initial"] and list(results.level.values) == [1, 2]
        assert results.attrs["fit_videos"] == 12
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| run (step 2) | initial |" in capsys.readouterr().out


def test_probe_scores_whole_pairs_and_single_digits():
    read = torch.tensor([[3, 5], [3, 5], [3, 3], [1, 2]])
    truth = np.array([[5, 3], [3, 4], [3, 4], [3, 3]])
    np.testing.assert_allclose(probe.scores(read, truth), [1 / 4, (1 + 0.5 + 0.5 + 0) / 4])
