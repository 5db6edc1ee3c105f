"""Open-loop rollouts: the official context semantics, no peeking past the context, --prior-levels, the NetCDF
file, and the per-level KLs."""
import numpy as np
import pyro
import pytest
import torch
import xarray as xr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pyro_cwvae.data import VideoDataset
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.model.elbo import elbo_terms
from pyro_cwvae.model.step_sharing import sharing_steps
from pyro_cwvae.errors import UserError
from pyro import poutine

from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.prediction.frames import baseline_frames
from pyro_cwvae.prediction import kl as kl_module
from pyro_cwvae.prediction.kl import kl_per_sequence, level_kls, truth_kls
from pyro_cwvae.prediction.latents import context_latents, filtered_steps, rollout_trace
from pyro_cwvae.prediction.options import Intervention, PredictionOptions
from pyro_cwvae.prediction.rollout import rollout, summary, write_rollout
from pyro_cwvae.prediction.run import Run, load_run
from pyro_cwvae.training.loop import fit


class EditableVideos(VideoDataset):
    """Generated Moving MNIST with short test videos that a test may edit."""

    name, channels = "test-videos", 1

    def __init__(self, lengths=(30, 30)):
        self.generator = GeneratedMovingMNIST(test_length=max(lengths))
        self.videos = [self.generator.test_video(i)[:n].copy() for i, n in enumerate(lengths)]

    def train_batch(self, step, batch_size, seq_len, seed):
        return self.generator.train_batch(step, batch_size, seq_len, seed)

    @property
    def num_test(self):
        return len(self.videos)

    def test_video(self, index):
        return self.videos[index]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import TINY
    from pyro_cwvae.model.config import Config

    cfg = Config(**{**TINY, "steps": 2, "elbo": "meanfield"}, run_dir=str(tmp_path_factory.mktemp("run")))
    fit(cfg, GeneratedMovingMNIST(), progress=False)
    return cfg


def roll(cfg, data, prior_levels=0, **kwargs):
    options = PredictionOptions(horizon=12, context=4, samples=2, sequences=2).replace(**kwargs)
    return rollout(load_run(cfg.run_dir, "cpu"), options, Intervention(prior_levels), dataset=data)


def three_levels(tiny_cfg):
    """An untrained 3-level CW-VAE with k 2 (periods 1, 2, 4) and a batch of two 7-frame videos."""
    cfg = tiny_cfg.replace(levels=3, seq_len=8)
    run = Run(cfg, CWVAENets(cfg).eval(), model, guide, step=0)
    return run, torch.rand(2, 7, 1, 64, 64, generator=torch.Generator().manual_seed(1))


def latents(run, context, num_frames=12, prior_levels=0, seed=5):
    """The context's decided sites and the open-loop model trace, both {site name: value}, under one seed."""
    pyro.set_rng_seed(seed)
    with torch.no_grad(), sharing_steps(run.nets):
        decided = context_latents(run, context, prior_levels)
        rolled = poutine.trace(poutine.replay(run.model, trace=decided)).get_trace(
            None, run.nets, run.cfg, num_frames=num_frames, batch_size=context.shape[0])
    values = lambda trace: {n: s["value"] for n, s in trace.nodes.items() if n.startswith("s_")}
    return values(decided), values(rolled), decided, rolled


def changed_sites(before, after):
    return {name for name in before if not torch.equal(before[name], after[name])}


def test_filtered_steps_follow_the_official_floor(tiny_cfg):
    cfg = tiny_cfg.replace(levels=3, factor=6)
    assert [filtered_steps(cfg, level, 8, 0) for level in (1, 2, 3)] == [8, 1, 0]  # the paper's Figure 7
    assert [filtered_steps(cfg, level, 36, 0) for level in (1, 2, 3)] == [36, 6, 1]
    assert [filtered_steps(cfg, level, 36, 2) for level in (1, 2, 3)] == [36, 0, 0]


def test_partially_observed_steps_come_from_the_prior(tiny_cfg):
    """Context 5 with periods 1, 2, 4: s_3_4 (frames 4-7) and s_2_4 (frames 4-5) see only frame 4."""
    run, video = three_levels(tiny_cfg)
    context = video[:, :5]
    decided, rolled, decided_trace, rolled_trace = latents(run, context)
    assert set(decided) == {"s_3_0", "s_3_4", "s_2_0", "s_2_2", "s_2_4", *(f"s_1_{t}" for t in range(5))}
    for name in decided:  # the context's latents are replayed as decided
        assert torch.equal(rolled[name], decided[name])
    # A site drawn from the prior has the model's own conditional as its distribution; a filtered one the guide's.
    same = {name for name in decided
            if torch.equal(decided_trace.nodes[name]["fn"].mean, rolled_trace.nodes[name]["fn"].mean)}
    assert same == {"s_3_4", "s_2_4"}

    edited = context.clone()
    edited[:, 4] = 1 - edited[:, 4]  # the only context frame of the partial steps' windows
    decided_edit, rolled_edit, _, _ = latents(run, edited)
    assert changed_sites(decided, decided_edit) == {"s_1_4"}  # the partial steps ignore their frame
    changed = changed_sites(rolled, rolled_edit)
    assert not any(name.startswith(("s_3_", "s_2_")) for name in changed)  # the top levels' predictions too
    assert {f"s_1_{t}" for t in range(4, 12)} == changed  # level 1 filtered frame 4

    edited = context.clone()
    edited[:, 3] = 1 - edited[:, 3]  # inside the full windows of s_3_0 and s_2_2
    decided_edit, _, _, _ = latents(run, edited)
    assert changed_sites(decided, decided_edit) >= {"s_3_0", "s_2_2", "s_1_3"}


def test_prior_levels_draw_every_context_step_of_the_top_levels(tiny_cfg):
    run, video = three_levels(tiny_cfg)
    context = video[:, :5]
    decided, rolled, decided_trace, rolled_trace = latents(run, context, prior_levels=1)
    same = {name for name in decided
            if torch.equal(decided_trace.nodes[name]["fn"].mean, rolled_trace.nodes[name]["fn"].mean)}
    assert same == {"s_3_0", "s_3_4", "s_2_4"}
    edited = 1 - context
    decided_edit, _, _, _ = latents(run, edited, prior_levels=1)
    assert changed_sites(decided, decided_edit) == set(decided) - {"s_3_0", "s_3_4"}


def test_whole_top_steps_take_one_guide_pass_with_the_same_draws(tiny_cfg, monkeypatch):
    import pyro_cwvae.prediction.latents as predict

    run, video = three_levels(tiny_cfg)
    context = video[:, :4]  # one whole top step
    pyro.set_rng_seed(2)
    general = predict.latents_level_by_level(run, context, 0)
    monkeypatch.setattr(predict, "latents_level_by_level", None)  # the fast path must not need it
    pyro.set_rng_seed(2)
    fast = context_latents(run, context)
    names = [name for name in fast.nodes if name.startswith("s_")]
    assert sorted(names) == sorted(general.nodes)
    for name in names:
        assert torch.equal(fast.nodes[name]["value"], general.nodes[name]["value"]), name


def test_prediction_uses_no_frame_after_the_context(trained):
    data = EditableVideos()
    before = roll(trained, data)
    for video in data.videos:
        video[4:] = 255 - video[4:]  # change every frame after the context
    after = roll(trained, data)
    assert np.array_equal(before.prediction.values, after.prediction.values)
    assert not np.array_equal(before.truth.values, after.truth.values)


def test_each_sequences_predictions_come_from_its_own_context(trained):
    """Samples x sequences rows in one batch: editing the context of sequence 1 changes its predictions in every
    sample, and those of sequence 0 not at all (the same noise, row for row)."""
    data, edited = EditableVideos(), EditableVideos()
    edited.videos[1][:4] = 255 - edited.videos[1][:4]
    before, after = roll(trained, data).prediction.values, roll(trained, edited).prediction.values
    assert np.array_equal(before[:, 0], after[:, 0])
    assert all(not np.array_equal(before[s, 1, 4:], after[s, 1, 4:]) for s in range(before.shape[0]))


def test_prior_levels_make_the_top_levels_ignore_the_context(trained):
    data, edited = EditableVideos(), EditableVideos()
    for video in edited.videos:
        video[:4] = 255 - video[:4]  # different context frames
    predictions = {n: (roll(trained, data, prior_levels=n).prediction.values,
                       roll(trained, edited, prior_levels=n).prediction.values) for n in (0, 1, 2)}
    assert not np.array_equal(*predictions[0])  # filtering sees the context
    assert not np.array_equal(*predictions[1])  # level 1 still filters it
    assert np.array_equal(*predictions[2])  # every level from its prior: the context cannot matter
    assert not np.array_equal(predictions[0][0], predictions[1][0])


def test_netcdf_round_trip(trained, tmp_path):
    data = EditableVideos(lengths=(30, 10))  # the second video ends before context + horizon
    ds = roll(trained, data, horizon=20)
    path = write_rollout(ds, tmp_path / "rollout.nc")
    assert not list(tmp_path.glob("*.tmp"))
    with xr.open_dataset(path) as loaded:
        assert loaded.prediction.dims == ("sample", "sequence", "time", "channel", "y", "x")
        assert loaded.prediction.dtype == np.uint8 and loaded.truth.dtype == np.uint8
        assert loaded.prediction.encoding["zlib"]
        assert loaded.sizes["time"] == 24 and int(loaded.is_context.sum()) == 4
        assert list(loaded.level.values) == [1, 2]
        assert loaded.kl.attrs["units"] == "nats" and loaded.psnr.attrs["units"] == "dB"
        assert loaded.attrs["checkpoint_step"] == 2 and loaded.attrs["seed"] == 0
        assert loaded.attrs["elbo"] == "meanfield"  # the run's estimator, not the package default
        assert "pyro-ppl" in loaded.attrs["versions"] and '"levels": 2' in loaded.attrs["config"]
        np.testing.assert_array_equal(loaded.has_truth[1], np.arange(24) < 10)
        assert np.isnan(loaded.psnr[:, 1, 10:]).all() and np.isfinite(loaded.ssim[:, 1, :10]).all()
        # The last-frame baseline is exact at the last context frame.
        assert np.isinf(loaded.psnr_last_frame[:, 3]).all()
        # KL: defined exactly where a level is active (within the frames every sequence has), NaN elsewhere.
        active = np.zeros((2, 24), bool)
        active[0, :10] = True
        active[1, :10:2] = True
        np.testing.assert_array_equal(np.isfinite(loaded.kl.values), np.broadcast_to(active, (2, 2, 24)))
        table = loaded.kl.sum("time")
        np.testing.assert_allclose(table.values, np.nansum(loaded.kl.values, axis=-1), rtol=1e-6)
        # Table 1: one window of the 8-frame training sequences fits in the 10 frames with a KL.
        np.testing.assert_allclose(loaded.kl_table.values, np.nansum(loaded.kl.values[:, :, :8], -1).mean(0),
                                   rtol=1e-6)
        assert loaded.kl_table.attrs["frames_per_sequence"] == 8 and loaded.kl_table.attrs["units"] == "nats"
        assert "(Table 1)" in loaded.kl_table.attrs["long_name"]
        xr.testing.assert_identical(loaded.load(), ds)


def test_kl_per_training_sequence_sums_whole_windows():
    active = np.zeros((2, 20), np.float32)  # levels 1 and 2 with k 2 over 20 frames, KL 1 at each active step
    active[0] = 1.0
    active[1, ::2] = 1.0
    kl = np.where(active > 0, 1.0, np.nan)[None].repeat(3, 0)
    np.testing.assert_array_equal(kl_per_sequence(kl, 20, 8), [8.0, 4.0])  # two windows, frames 16-19 left out
    rng = np.random.default_rng(0)
    kl = np.where(active > 0, rng.uniform(0, 3, (3, 2, 20)), np.nan)
    want = np.mean([[np.nansum(kl[n, :, w * 6:(w + 1) * 6], -1) for w in range(3)] for n in range(3)], (0, 1))
    np.testing.assert_allclose(kl_per_sequence(kl, 19, 6), want, rtol=1e-6)
    assert np.isnan(kl_per_sequence(kl, 7, 8)).all()  # no whole window


def test_per_level_kl_is_the_analytic_kl_of_the_elbo(trained):
    run = load_run(trained.run_dir, "cpu")
    video = torch.from_numpy(np.stack(EditableVideos().videos)[:, :8]).float() / 255
    pyro.set_rng_seed(3)
    kl = level_kls(run, video)
    pyro.set_rng_seed(3)
    with torch.no_grad():
        terms = elbo_terms(run.model, run.guide, video, run.nets, run.cfg.replace(elbo="meanfield"))
    per_level = np.nansum(kl, axis=(0, 2)) / video.shape[:2].numel()
    np.testing.assert_allclose(per_level, terms.kl.numpy(), rtol=1e-5)


def test_the_kl_of_the_true_frames_covers_every_sequence_of_every_group(tiny_cfg, monkeypatch):
    """The guide filters a group of sequences at a time: 5 sequences in groups of 2 (the paper's 1000-frame test
    videos make groups of 2 too) each get a KL at every step eq. 1 makes active in the frames asked for."""
    run = Run(tiny_cfg, CWVAENets(tiny_cfg).eval(), model, guide, step=0)
    monkeypatch.setattr(kl_module, "KL_FRAMES_PER_CALL", 12)  # 12 // 6 frames: two sequences a group
    truth = np.random.default_rng(0).integers(0, 256, (5, 8, 1, 64, 64), dtype=np.uint8)
    kl = truth_kls(run, truth, 6, torch.device("cpu"))
    assert kl.shape == (5, tiny_cfg.levels, 8)
    for level in range(1, tiny_cfg.levels + 1):  # level l ticks at frames 0, k^(l-1), 2 k^(l-1), ...
        active = np.arange(8) % tiny_cfg.factor ** (level - 1) == 0
        active[6:] = False  # frames past those asked for have no KL
        assert np.isfinite(kl[:, level - 1, active]).all(), level
        assert np.isnan(kl[:, level - 1, ~active]).all(), level


def test_paper_protocol_scores_the_raw_float_means_while_decoding(trained, monkeypatch):
    import pyro_cwvae.prediction.frames as predict

    data = EditableVideos()
    monkeypatch.setattr(predict, "DECODE_CHUNK", 6)  # several chunks of 3 frames: scores written chunk by chunk
    ds = roll(trained, data, samples=2, seed=4)
    run = load_run(trained.run_dir, "cpu")
    truth = torch.from_numpy(np.stack(data.videos)[:, :16]).float() / 255
    pyro.set_rng_seed(4)
    states = rollout_trace(run, truth[:, :4].repeat(2, 1, 1, 1, 1), 16).nodes["_RETURN"]["value"]
    with torch.no_grad():
        means = run.nets.decoder(states).view(2, 2, 16, 1, 64, 64).double().numpy()
    t = truth.double().numpy()
    want_psnr = np.empty((2, 2, 16))
    want_ssim = np.empty((2, 2, 16))
    for index in np.ndindex(2, 2, 16):
        true, pred = t[index[1:]][0], means[index][0]  # one channel: per channel is per frame
        want_psnr[index] = peak_signal_noise_ratio(true, pred, data_range=1.0)
        want_ssim[index] = structural_similarity(true, pred, data_range=2.0)
    np.testing.assert_allclose(ds.psnr.values, want_psnr, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ds.ssim.values, want_ssim, rtol=0, atol=1e-4)
    assert ds.attrs["protocol"] == "paper" and ds.psnr.attrs["protocol"] == "paper"
    assert "data_range 2" in ds.attrs["protocol_ssim"] and "not quantised" in ds.psnr.attrs["frames"]


def test_best_of_samples_is_chosen_per_metric_over_the_predicted_frames(trained):
    ds = roll(trained, EditableVideos(), samples=3)
    predicted = ~ds.is_context
    for metric in ("psnr", "ssim"):
        ranking = ds[metric].where(predicted).mean("time")  # (sample, sequence)
        best = ds[metric].isel(sample=ranking.argmax("sample"))
        np.testing.assert_array_equal(ds[f"{metric}_best"].values, best.values)
        assert ds[f"{metric}_best"].dims == ("sequence", "time")
        assert (ds[f"{metric}_best"].where(predicted).mean("time") >= ranking.max("sample") - 1e-6).all()


def test_summary_reports_the_protocols_numbers(trained):
    ds = roll(trained, EditableVideos(), samples=3)
    for name, suffix in (("paper", "_best"), ("standard", "")):
        ds.attrs["protocol"] = name
        psnr = ds["psnr" + suffix].isel(time=slice(4, None)).values
        ssim = ds["ssim" + suffix].isel(time=slice(4, None)).values
        line = summary(ds).splitlines()[0]
        assert line.startswith(f"PSNR {psnr[np.isfinite(psnr)].mean():.2f} dB, SSIM {ssim.mean():.3f}"), line
        assert f"{name} protocol" in line
    table = ", ".join(f"level {level} {value:.1f}" for level, value in zip((1, 2), ds.kl_table.values))
    assert summary(ds).splitlines()[1] == f"KL per training sequence of 8 frames (nats): {table}"


def test_summary_of_a_rollout_shorter_than_a_training_sequence_says_why_it_has_no_kl(trained):
    ds = roll(trained, EditableVideos(), horizon=2)  # 4 + 2 frames, training sequences of 8
    assert np.isnan(ds.kl_table.values).all() and ds.kl_table.windows_per_sequence == 0
    assert summary(ds).splitlines()[1] == ("KL per training sequence of 8 frames (nats): none: the frames scored hold "
                                           "no whole training sequence (a longer --horizon or --context)")


def test_standard_protocol_scores_the_saved_frames(trained):
    ds = roll(trained, EditableVideos(), protocol="standard")
    pred = ds.prediction.values.astype(np.float64) / 255
    truth = ds.truth.values.astype(np.float64) / 255
    for index in [(0, 0, 1), (1, 1, 9)]:
        true, frame = truth[index[1:]][0], pred[index][0]
        assert abs(ds.psnr.values[index] - peak_signal_noise_ratio(true, frame, data_range=1.0)) < 1e-4
        assert abs(ds.ssim.values[index] - structural_similarity(true, frame, data_range=1.0)) < 1e-4
    assert ds.attrs["protocol"] == "standard" and "data_range 1" in ds.ssim.attrs["convention"]
    with pytest.raises(UserError, match="--protocol 'best'"):
        roll(trained, EditableVideos(), protocol="best")


def test_the_api_names_a_mistyped_option_and_the_one_meant():
    """Before anything is loaded; ``evaluate``'s own keywords count as known."""
    from pyro_cwvae import api

    with pytest.raises(TypeError, match=r"^rollout\(\) got unknown option\(s\) 'horizn' \(did you mean 'horizon'\?\)"):
        api.rollout("no-such-run", horizn=10)
    with pytest.raises(TypeError, match=r"^evaluate\(\) got unknown option\(s\) 'partcles' \(did you mean "
                                        r"'particles'\?\); its options: context, .*fvd_window"):
        api.evaluate(["no-such-run"], partcles=2)


def test_the_api_passes_on_its_dataset_device_and_evaluation_options(trained, tmp_path):
    from pyro_cwvae import api

    other = GeneratedMovingMNIST(seed=7, test_length=20)  # not the run's test videos
    ds = api.rollout(trained.run_dir, horizon=6, context=4, samples=1, sequences=2, dataset=other)
    np.testing.assert_array_equal(ds.truth.values, np.stack([other.test_video(i)[:10] for i in range(2)]))
    with pytest.raises(UserError, match="--device"):
        api.rollout(trained.run_dir, horizon=6, context=4, device="tpu:x")
    evaluated = api.evaluate([trained.run_dir], sequences=2, samples=2, horizon=6, context=4, perceptual=False,
                             dataset=other)
    assert evaluated.sizes["sequence"] == 2 and evaluated.attrs["samples"] == 2


def test_the_baselines_are_the_last_context_frame_and_a_training_frame_of_the_seed():
    data = GeneratedMovingMNIST(test_length=12)
    truth = np.stack([data.test_video(i)[:12] for i in range(3)])
    shown = {seed: baseline_frames(data, truth, context=5, seed=seed) for seed in (0, 1)}
    np.testing.assert_array_equal(shown[0]["last_frame"], truth[:, 4:5])
    again = baseline_frames(data, truth, context=5, seed=0)["random_frame"]
    assert shown[0]["random_frame"].shape == (3, 1, 1, 64, 64)
    np.testing.assert_array_equal(again, shown[0]["random_frame"])  # the seed's, every time
    assert not np.array_equal(shown[0]["random_frame"], shown[1]["random_frame"])  # and another seed's differ
    assert not any(np.array_equal(frame, video[t]) for frame in shown[0]["random_frame"][:, 0] for video in truth
                   for t in range(12))  # from the training split, not the test videos
