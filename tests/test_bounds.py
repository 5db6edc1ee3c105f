"""Importance-weighted bounds: against Pyro's ELBO, their ordering, and log p(x) of a linear-Gaussian model."""
from types import SimpleNamespace

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.stats import multivariate_normal

from pyro_cwvae.evaluation.bounds import ImportanceWeights, importance_weighted_bound
from pyro_cwvae.errors import UserError
from pyro_cwvae.guides.cwvae import guide
from pyro_cwvae.models.cwvae import model
from pyro_cwvae.model.nets import CWVAENets
from pyro_cwvae.evaluation.scoring import bounds
from pyro_cwvae.evaluation.truth import GroundTruth
from pyro_cwvae.prediction import Run
from pyro_cwvae.prediction.scores import PROTOCOLS

SIGMA = 0.5  # stddev of x_t | z in the linear-Gaussian model
D = 3  # dimensions of z and of each x_t


def cwvae_run(cfg) -> Run:
    return Run(cfg, CWVAENets(cfg).eval(), model, guide, step=0)


def test_one_particle_bound_is_pyros_elbo(tiny_cfg, video):
    """With K = 1 both numbers are the single-sample ELBO: Pyro's Trace_ELBO on the same draws."""
    run = cwvae_run(tiny_cfg)
    pyro.set_rng_seed(1)
    bound = importance_weighted_bound(run, video, particles=1)
    pyro.set_rng_seed(1)
    elbo = -pyro.infer.Trace_ELBO().loss(model, guide, video, run.nets, run.cfg) / video.shape[:2].numel()
    assert np.array_equal(bound.iwae, bound.elbo)
    assert bound.iwae.shape == (video.shape[0],)
    assert bound.iwae.mean() == pytest.approx(elbo, rel=1e-6)


def test_bounds_tighten_with_particles(tiny_cfg):
    """ELBO <= IWAE_2 on the same draws; IWAE_2 < IWAE_4 on average over 96 sequences (IWAE_2 from the first two
    of the four draws of each sequence: common draws make the mean gain several standard errors above 0)."""
    run = cwvae_run(tiny_cfg)
    frames = 2  # one step of each level: cheap rows, so many sequences
    video = torch.rand(96, frames, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    pyro.set_rng_seed(2)
    four = importance_weighted_bound(run, video, 4)
    two = ImportanceWeights(four.log_weights[:, :2], frames)
    assert np.all(two.elbo <= two.iwae) and np.all(four.elbo <= four.iwae)
    gain = four.iwae - two.iwae
    assert gain.mean() > 3 * gain.std() / len(gain) ** 0.5, gain
    assert np.all(np.isfinite(four.log_weights))


def linear_gaussian_model(video, nets, cfg):
    """z ~ N(0, I_D); x_t | z ~ N(z, SIGMA^2 I_D) for t = 1..T."""
    with pyro.plate("batch", video.shape[0]):
        z = pyro.sample("z", dist.Normal(video.new_zeros(D), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z[:, None], SIGMA).expand(video.shape).to_event(2), obs=video)


def posterior_guide(stretch: float = 1.0, shift: float = 0.0):
    """The exact posterior q(z | x) = p(z | x), or a wrong one with its stddev stretched and its mean shifted."""
    def guide(video, nets, cfg):
        precision = 1.0 + video.shape[1] / SIGMA ** 2
        loc = video.sum(1) / SIGMA ** 2 / precision + shift
        with pyro.plate("batch", video.shape[0]):
            pyro.sample("z", dist.Normal(loc, stretch * precision ** -0.5).to_event(1))
    return guide


def linear_gaussian_run(guide) -> SimpleNamespace:
    return SimpleNamespace(cfg=None, nets=torch.nn.Module(), model=linear_gaussian_model, guide=guide)  # no steps


def log_evidence(video: torch.Tensor) -> np.ndarray:
    """log p(x) per sequence in nats per frame: each dimension's (x_1..x_T) ~ N(0, SIGMA^2 I + 1 1^T)."""
    B, T = video.shape[:2]
    cov = SIGMA ** 2 * np.eye(T) + np.ones((T, T))
    x = video.double().numpy().transpose(0, 2, 1)  # (B, D, T)
    return multivariate_normal(np.zeros(T), cov).logpdf(x).sum(-1) / T


@pytest.fixture
def gaussian_video() -> torch.Tensor:
    """(B=20, T=6, D) draws of the linear-Gaussian model."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(20, 1, D, generator=g)
    return z + SIGMA * torch.randn(20, 6, D, generator=g)


@pytest.mark.parametrize("particles,frames_per_call", [(1, 2048), (4, 2048), (4, 18)])
def test_exact_posterior_gives_log_evidence(gaussian_video, particles, frames_per_call):
    """With q = p(z | x) every weight is p(x): the bound is log p(x) for any K, however the rows are chunked
    (18 frames: chunks of 3 rows that cut across sequences)."""
    run = linear_gaussian_run(posterior_guide())
    bound = importance_weighted_bound(run, gaussian_video, particles, frames_per_call=frames_per_call)
    np.testing.assert_allclose(bound.iwae, log_evidence(gaussian_video), rtol=0, atol=1e-5)
    np.testing.assert_allclose(bound.elbo, log_evidence(gaussian_video), rtol=0, atol=1e-5)


def test_bound_approaches_log_evidence(gaussian_video):
    """With a wrong q, IWAE_1 (the ELBO) lies well below log p(x) and IWAE_4096 reaches it to Monte-Carlo noise
    (about 0.003 nats per frame on these 20 sequences)."""
    run = linear_gaussian_run(posterior_guide(stretch=1.5, shift=0.2))
    truth = log_evidence(gaussian_video)
    gap_1, gap_4096 = ((truth - importance_weighted_bound(run, gaussian_video, k, frames_per_call=10 ** 7).iwae).mean()
                       for k in (1, 4096))
    assert gap_1 > 0.1 and abs(gap_4096) < 0.01, (gap_1, gap_4096)


def test_particles_must_be_positive(gaussian_video):
    with pytest.raises(UserError, match="--particles"):
        importance_weighted_bound(linear_gaussian_run(posterior_guide()), gaussian_video, 0)


def test_site_outside_batch_plate_is_refused(gaussian_video):
    def global_guide(video, nets, cfg):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        posterior_guide()(video, nets, cfg)

    def global_model(video, nets, cfg):
        pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        linear_gaussian_model(video, nets, cfg)

    run = linear_gaussian_run(global_guide)
    run.model = global_model
    with pytest.raises(UserError, match="'scale' lies outside the 'batch' plate"):
        importance_weighted_bound(run, gaussian_video, 2)


def test_evaluate_bounds_read_only_the_frames_every_test_video_has(tiny_cfg):
    """``scoring.bounds`` of videos padded past the shortest one's end (frames 8..11 of the second): the bounds of
    the first ``kl_frames`` frames alone, whatever the padding holds."""
    run = cwvae_run(tiny_cfg)
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (2, 12, 1, 64, 64), dtype=np.uint8)
    has_truth = np.ones((2, 12), bool)
    has_truth[1, 8:] = False
    results = []
    for padding in (0, 255):
        truth[1, 8:] = padding
        test = GroundTruth(truth=truth, has_truth=has_truth, context=4, protocol=PROTOCOLS["paper"], kl_frames=8)
        pyro.set_rng_seed(3)
        results.append(bounds(run, test, particles=2))
    pyro.set_rng_seed(3)
    alone = importance_weighted_bound(run, torch.from_numpy(truth[:, :8]).float() / 255, particles=2)
    for iwae, elbo in results:
        np.testing.assert_array_equal(iwae, alone.iwae)
        np.testing.assert_array_equal(elbo, alone.elbo)
