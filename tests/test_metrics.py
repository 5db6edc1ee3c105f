"""PSNR and SSIM agree with scikit-image frame by frame; each convention of the two protocols; best of N."""
import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pyro_cwvae.prediction.scores import PAPER, STANDARD, best_of_samples, psnr, ssim

TOLERANCE = 1e-4


def reference(pred: torch.Tensor, truth: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's PSNR and SSIM of every frame of ``(..., C, H, W)`` tensors, in float64."""
    lead = pred.shape[:-3]
    p = pred.reshape(-1, *pred.shape[-3:]).double().numpy()
    t = truth.reshape(-1, *truth.shape[-3:]).double().numpy()
    psnrs = [peak_signal_noise_ratio(b, a, data_range=1.0) for a, b in zip(p, t)]
    ssims = [structural_similarity(a, b, data_range=1.0, channel_axis=0) for a, b in zip(p, t)]
    return np.reshape(psnrs, lead), np.reshape(ssims, lead)


def assert_matches_skimage(pred: torch.Tensor, truth: torch.Tensor) -> None:
    want_psnr, want_ssim = reference(pred, truth)
    got_psnr, got_ssim = psnr(pred, truth), ssim(pred, truth)
    assert got_psnr.shape == pred.shape[:-3] and got_ssim.shape == pred.shape[:-3]
    np.testing.assert_allclose(got_psnr.numpy(), want_psnr, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got_ssim.numpy(), want_ssim, rtol=0, atol=TOLERANCE)


def gradient_frames(n: int, channels: int) -> torch.Tensor:
    """Linear ramps in assorted directions and offsets, clipped to [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    frames = [
        ((0.3 + i / n) * xx + (0.7 - i / n) * yy + 0.05 * c).clamp(0, 1)
        for i in range(n)
        for c in range(channels)
    ]
    return torch.stack(frames).reshape(n, channels, 64, 64)


def blob_frames(shifts: list[tuple[int, int]], channels: int) -> torch.Tensor:
    """Bright digit-like strokes on black, moved by ``shifts`` pixels (as in Moving MNIST)."""
    base = torch.zeros(64, 64)
    base[20:44, 28:32] = 1.0  # a "1"
    base[20:24, 22:40] = 0.8
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    base = torch.maximum(base, torch.exp(-((yy - 40) ** 2 + (xx - 18) ** 2) / 18))
    frames = torch.stack([torch.roll(base, shift, dims=(0, 1)) for shift in shifts])
    return frames[:, None].expand(-1, channels, -1, -1).clone()


@pytest.mark.parametrize("channels", [1, 3])
def test_random_frames(channels):
    gen = torch.Generator().manual_seed(channels)
    truth = torch.rand(5, channels, 64, 64, generator=gen)
    pred = torch.rand(5, channels, 64, 64, generator=gen)
    assert_matches_skimage(pred, truth)


@pytest.mark.parametrize("channels", [1, 3])
def test_structured_frames(channels):
    gen = torch.Generator().manual_seed(10 + channels)
    ramps = gradient_frames(4, channels)
    assert_matches_skimage(ramps.flip(0), ramps)

    digits = blob_frames([(0, 0), (3, -2), (-5, 7), (10, 10)], channels)
    assert_matches_skimage(digits, blob_frames([(0, 1), (0, 0), (-4, 7), (0, 0)], channels))

    noisy = (digits + 0.05 * torch.randn(digits.shape, generator=gen)).clamp(0, 1)
    assert_matches_skimage(noisy, digits)


def test_batched_shapes_and_float32():
    gen = torch.Generator().manual_seed(3)
    truth = torch.rand(2, 3, 4, 3, 16, 20, generator=gen, dtype=torch.float32)
    pred = (truth + 0.1 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    assert_matches_skimage(pred, truth)
    # The same frames scored one by one give the same answers as the batch.
    one = ssim(pred[1, 2, 3], truth[1, 2, 3])
    assert one.shape == () and abs(one.item() - ssim(pred, truth)[1, 2, 3].item()) < 1e-12


def test_large_batch_is_chunked_consistently(monkeypatch):
    import pyro_cwvae.prediction.scores as metrics

    gen = torch.Generator().manual_seed(4)
    truth = torch.rand(7, 5, 1, 12, 12, generator=gen)
    pred = torch.rand(7, 5, 1, 12, 12, generator=gen)
    whole_ssim, whole_psnr = ssim(pred, truth), psnr(pred, truth)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 3 * 144)  # three frames per chunk
    assert torch.equal(ssim(pred, truth), whole_ssim)
    assert torch.equal(psnr(pred, truth), whole_psnr)


def test_identical_frames():
    frames = blob_frames([(0, 0), (2, 2)], 3)
    assert torch.all(psnr(frames, frames) == math.inf)
    np.testing.assert_allclose(ssim(frames, frames).numpy(), 1.0, atol=1e-12)
    noise = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(5))
    np.testing.assert_allclose(ssim(noise, noise).numpy(), 1.0, atol=1e-12)


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(2, 1, 8, 8), torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="at least 7x7"):
        ssim(torch.zeros(1, 6, 6), torch.zeros(1, 6, 6))


def biased_rgb_means(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truth in [0, 1] and decoder-like float means that overshoot it: slightly biased, partly outside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    truth = torch.cat([blob_frames([(0, 0), (4, -3)], 3), gradient_frames(2, 3)])
    means = 1.1 * truth - 0.05 + 0.03 * torch.randn(truth.shape, generator=gen)
    means[:, 1] += 0.04  # one channel further off: per-channel PSNR differs from the pooled one
    assert means.min() < 0 and means.max() > 1
    return means, truth


def test_paper_protocol_is_skimage_0_18_on_raw_float_means():
    means, truth = biased_rgb_means(6)
    got_psnr, got_ssim = PAPER.score(PAPER.frames(means), truth)
    p, t = means.double().numpy(), truth.double().numpy()
    # scikit-image 0.18 with no data_range: 2 for SSIM on floats, 1 for PSNR with non-negative truth; per channel
    want_ssim = [structural_similarity(a, b, data_range=2.0, channel_axis=0) for a, b in zip(t, p)]
    want_psnr = [np.mean([peak_signal_noise_ratio(a[c], b[c], data_range=1.0) for c in range(3)]) for a, b in zip(t, p)]
    np.testing.assert_allclose(got_ssim.numpy(), want_ssim, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got_psnr.numpy(), want_psnr, rtol=0, atol=TOLERANCE)


def test_standard_protocol_scores_the_saved_uint8_frames():
    means, truth = biased_rgb_means(7)
    got_psnr, got_ssim = STANDARD.score(STANDARD.frames(means), truth)
    p = np.round(np.clip(means.double().numpy(), 0, 1) * 255) / 255
    t = truth.double().numpy()
    want_ssim = [structural_similarity(a, b, data_range=1.0, channel_axis=0) for a, b in zip(t, p)]
    want_psnr = [peak_signal_noise_ratio(a, b, data_range=1.0) for a, b in zip(t, p)]
    np.testing.assert_allclose(got_ssim.numpy(), want_ssim, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(got_psnr.numpy(), want_psnr, rtol=0, atol=TOLERANCE)


def test_each_convention_changes_the_numbers():
    means, truth = biased_rgb_means(8)
    raw, saved = PAPER.frames(means), STANDARD.frames(means)
    assert not torch.equal(raw, saved)
    assert (ssim(raw, truth, 2.0) - ssim(raw, truth, 1.0)).abs().min() > 1e-3
    assert (psnr(raw, truth, per_channel=True) - psnr(raw, truth)).abs().min() > 1e-3
    assert (psnr(raw, truth) - psnr(saved, truth)).abs().min() > 1e-3
    assert PAPER.conventions().keys() == STANDARD.conventions().keys() == {"frames", "ssim", "psnr", "samples"}
    assert all(PAPER.conventions()[k] != STANDARD.conventions()[k] for k in PAPER.conventions())


def test_best_of_samples_ranks_by_the_mean_over_the_ranked_frames():
    rng = np.random.default_rng(9)
    scores = rng.uniform(10, 30, (4, 3, 10))
    ranked = np.broadcast_to(np.arange(10) >= 4, (3, 10)).copy()  # the predicted frames
    ranked[1, 8:] = False  # the second video ends early
    scores[:, 1, 8:] = np.nan
    scores[2, 0, :4] = 1000.0  # a sample best on the context frames only: not chosen for it
    want = np.empty((3, 10))
    for n in range(3):
        means = [scores[s, n][ranked[n]].mean() for s in range(4)]
        want[n] = scores[int(np.argmax(means)), n]
    np.testing.assert_array_equal(best_of_samples(scores, ranked), want)


def test_best_of_samples_edge_cases():
    scores = np.array([[[20.0, 20.0]], [[20.0, np.inf]]])  # sample 1 predicts a frame exactly
    np.testing.assert_array_equal(best_of_samples(scores, np.ones((1, 2), bool)), scores[1])
    nothing = np.full((2, 1, 2), np.nan)
    assert np.isnan(best_of_samples(nothing, np.ones((1, 2), bool))).all()


def test_psnr_per_channel_is_the_mean_of_skimage_per_channel():
    gen = torch.Generator().manual_seed(11)
    truth = torch.rand(3, 3, 16, 16, generator=gen)
    pred = (truth + 0.1 * torch.randn(truth.shape, generator=gen)).clamp(0, 1)
    want = [np.mean([peak_signal_noise_ratio(t[c], p[c], data_range=1.0) for c in range(3)])
            for t, p in zip(truth.double().numpy(), pred.double().numpy())]
    np.testing.assert_allclose(psnr(pred, truth, per_channel=True).numpy(), want, rtol=0, atol=TOLERANCE)
