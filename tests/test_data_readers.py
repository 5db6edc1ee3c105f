"""The archive readers: small videos written with PyAV in each published layout, read back through open_dataset."""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pyro_cwvae.data import DatasetError, cache, video_io
from pyro_cwvae.data.archives import GQNMazesArchive, KTHArchive, MineRLArchive, MovingMNISTArchive
from pyro_cwvae.data.generate import generate_moving_mnist
from pyro_cwvae.data.moving_mnist import GeneratedMovingMNIST
from pyro_cwvae.data.registry import DATASETS, open_dataset

# Codec loss measured on these smooth test videos (libx264 qp 2, yuv420p): gray ~0.2 mean abs error, RGB ~1.6
# (mostly the halved chroma resolution of yuv420p), KTH-like MPEG-4 AVI ~0.6. The bounds leave room for builds.
GRAY_LOSS, RGB_LOSS, AVI_LOSS = 0.5, 2.5, 1.5


@pytest.fixture(autouse=True)
def no_cache_override(monkeypatch):
    """Keep caches beside the test data, whatever the environment says."""
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)


def smooth_video(frames: int, channels: int, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 ``(frames, channels, height, width)`` of slow sine waves: content a codec keeps almost exactly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / 64.0
    freq = rng.uniform(0.2, 0.6, size=(channels, 2))
    phase = rng.uniform(0.0, 2 * np.pi, size=channels)
    t = np.arange(frames)[:, None, None, None]
    plane = freq[:, 0, None, None] * xx + freq[:, 1, None, None] * yy
    wave = np.sin(2 * np.pi * plane[None] + phase[None, :, None, None] + 0.15 * t)
    return np.clip(128 + 90 * wave, 0, 255).round().astype(np.uint8)


def write_split(folder: Path, videos: list[np.ndarray], names: list[str] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, video in enumerate(videos):
        name = names[index] if names else f"{index:05d}.mp4"
        video_io.write_video(folder / name, video, codec="mpeg4" if name.endswith(".avi") else None)


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def make_mmnist(root: Path, train_lengths=(20, 24, 30), test_lengths=(40, 40)) -> tuple[list, list]:
    train = [smooth_video(n, 1, seed=i) for i, n in enumerate(train_lengths)]
    test = [smooth_video(n, 1, seed=10 + i) for i, n in enumerate(test_lengths)]
    write_split(root / "train-seq100", train)
    write_split(root / "test-seq1000", test)
    return train, test


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_mmnist_reads_test_videos_in_name_order_up_to_codec_loss(tmp_path):
    _, test = make_mmnist(tmp_path)
    data = open_dataset("mmnist", tmp_path)
    assert isinstance(data, MovingMNISTArchive) and data.channels == 1 and data.num_test == 2
    for index, written in enumerate(test):
        video = data.test_video(index)
        assert video.shape == (40, 1, 64, 64) and video.dtype == np.uint8
        assert mae(video, written) < GRAY_LOSS
        assert mae(video, test[1 - index]) > 10 * GRAY_LOSS  # and it is not the other video


@pytest.mark.parametrize(
    "reader, nested", [(GQNMazesArchive, ""), (MineRLArchive, "minerl_navigate"), (MineRLArchive, "")]
)
def test_rgb_archives_read_rgb_videos(tmp_path, reader, nested):
    base = tmp_path / nested
    train = [smooth_video(25, 3, seed=i) for i in range(2)]
    test = [smooth_video(30, 3, seed=20 + i) for i in range(3)]
    write_split(base / "train", train)
    write_split(base / "test", test)
    data = open_dataset(reader.name, tmp_path)
    assert isinstance(data, reader) and data.num_test == 3
    for index, written in enumerate(test):
        video = data.test_video(index)
        assert video.shape == (30, 3, 64, 64)
        assert mae(video, written) < RGB_LOSS
    assert data.train_batch(0, 2, 10, seed=0).shape == (2, 10, 3, 64, 64)


def test_kth_splits_by_person_and_crops_then_resizes_to_64(tmp_path):
    names = [
        "person01_walking_d1_uncomp.avi",
        "person16_boxing_d2_uncomp.avi",
        "person17_running_d1_uncomp.avi",
        "person25_jogging_d4_uncomp.avi",
    ]
    videos = [smooth_video(20 + 2 * i, 1, height=120, width=160, seed=i) for i in range(4)]
    write_split(tmp_path / "walking", videos[:1], names=names[:1])
    write_split(tmp_path / "rest", videos[1:], names=names[1:])
    data = open_dataset("kth", tmp_path)
    assert isinstance(data, KTHArchive)
    assert [Path(f.name).name for f in data.files["train"]] == names[:2]
    assert [Path(f.name).name for f in data.files["test"]] == names[2:]
    for index, written in enumerate(videos[2:]):
        expected = video_io.square_resize(written)  # center 120x120, area-resized
        video = data.test_video(index)
        assert video.shape == (len(written), 1, 64, 64)
        assert mae(video, expected) < AVI_LOSS


def test_area_resize_averages_whole_and_partial_pixels():
    video = np.zeros((1, 1, 120, 160), np.uint8)
    video[..., :, 20:80] = 240  # the left half of the central 120x120 square
    small = video_io.square_resize(video)
    assert small.shape == (1, 1, 64, 64)
    assert (small[..., :32] == 240).all() and (small[..., 32:] == 0).all()
    assert np.allclose(video_io.area_weights(120, 64).sum(axis=1), 1.0)


def box_average(frames: np.ndarray, size: int) -> np.ndarray:
    """Area resizing written apart from ``square_resize``: along each axis, repeat every pixel ``size`` times and
    average blocks of the original length (exact in float64); rounded to the nearest level."""
    def along_last(x: np.ndarray) -> np.ndarray:
        return np.repeat(x, size, axis=-1).reshape(*x.shape[:-1], size, x.shape[-1]).mean(-1)

    resized = along_last(along_last(frames.astype(np.float64)).swapaxes(-1, -2)).swapaxes(-1, -2)
    return np.rint(resized).astype(np.uint8)


@pytest.mark.parametrize("height, width", [(120, 160), (96, 80), (64, 90)])
def test_square_resize_keeps_the_centre_square_averaged_by_area(height, width):
    video = np.random.default_rng(height).integers(0, 256, (3, 1, height, width), dtype=np.uint8)
    side = min(height, width)
    rows, cols = slice((height - side) // 2, (height + side) // 2), slice((width - side) // 2, (width + side) // 2)
    np.testing.assert_array_equal(video_io.square_resize(video), box_average(video[..., rows, cols], 64))


def test_zip_archive_reads_like_the_folder(tmp_path):
    folder = tmp_path / "unpacked"
    make_mmnist(folder)
    for top in ("", "moving_mnist_2digit/"):
        archive = tmp_path / f"mmnist{len(top)}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted(folder.rglob("*.mp4")):
                zipped.write(path, top + path.relative_to(folder).as_posix())
        from_zip = open_dataset("mmnist", archive)
        from_folder = open_dataset("mmnist", folder)
        assert from_zip.num_test == 2
        assert np.array_equal(from_zip.test_video(1), from_folder.test_video(1))
        assert np.array_equal(from_zip.train_batch(3, 4, 10, seed=1), from_folder.train_batch(3, 4, 10, seed=1))
        assert (tmp_path / cache.CACHE_FOLDER / archive.name / "mmnist-test.u8").is_file()


def test_pickled_reader_reopens_the_cache_instead_of_copying_it(tmp_path):
    make_mmnist(tmp_path / "folder")
    archive = tmp_path / "mm.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((tmp_path / "folder").rglob("*.mp4")):
            zipped.write(path, path.relative_to(tmp_path / "folder").as_posix())
    for data_dir in (tmp_path / "folder", archive):
        data = open_dataset("mmnist", data_dir)
        pickled = pickle.dumps(data)
        assert len(pickled) < 20_000  # the decoded frames (74 x 4096 bytes) stay out
        copy = pickle.loads(pickled)
        assert np.array_equal(copy.train_batch(2, 3, 10, seed=0), data.train_batch(2, 3, 10, seed=0))


def test_cache_is_built_once_and_rebuilt_when_a_file_changes(tmp_path, monkeypatch):
    _, test = make_mmnist(tmp_path)
    first = open_dataset("mmnist", tmp_path).test_video(0)
    assert sorted(p.name for p in (tmp_path / cache.CACHE_FOLDER).iterdir()) == [
        "mmnist-test.json", "mmnist-test.u8", "mmnist-train.json", "mmnist-train.u8"
    ]
    decoded = []
    real_read = video_io.read_video
    monkeypatch.setattr(video_io, "read_video", lambda *args, **kw: decoded.append(args[1]) or real_read(*args, **kw))
    again = open_dataset("mmnist", tmp_path)
    assert np.array_equal(again.test_video(0), first) and decoded == []
    write_split(tmp_path / "test-seq1000", [test[1]])  # 00000.mp4 now holds what 00001.mp4 holds
    changed = open_dataset("mmnist", tmp_path)
    assert [Path(label).name for label in decoded] == ["00000.mp4", "00001.mp4"]  # only the test split is redone
    assert mae(changed.test_video(0), test[1]) < GRAY_LOSS
    decoded.clear()
    video = tmp_path / "test-seq1000" / "00001.mp4"
    os.utime(video, ns=(video.stat().st_atime_ns, video.stat().st_mtime_ns + 10**9))  # same size, touched since
    open_dataset("mmnist", tmp_path).test_video(0)
    assert [Path(label).name for label in decoded] == ["00000.mp4", "00001.mp4"]


def test_a_cache_file_longer_than_its_index_says_is_rebuilt(tmp_path, monkeypatch):
    make_mmnist(tmp_path)
    first = open_dataset("mmnist", tmp_path).test_video(1)
    frames = tmp_path / cache.CACHE_FOLDER / "mmnist-test.u8"
    size = frames.stat().st_size
    with open(frames, "ab") as file:
        file.write(bytes(64 * 64))  # one frame's bytes too many: not what the index describes
    decoded = []
    real_read = video_io.read_video
    monkeypatch.setattr(video_io, "read_video", lambda *args, **kw: decoded.append(args[1]) or real_read(*args, **kw))
    assert np.array_equal(open_dataset("mmnist", tmp_path).test_video(1), first)
    assert len(decoded) == 2 and frames.stat().st_size == size


def test_cache_falls_back_to_user_cache_dir_or_env_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_mmnist(data)
    monkeypatch.setattr(cache, "_writable", lambda folder: False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home-cache"))
    open_dataset("mmnist", data)
    assert list((tmp_path / "home-cache" / "pyro-cwvae").glob("data-*/mmnist-train.u8"))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "chosen"))
    open_dataset("mmnist", data)
    assert list((tmp_path / "chosen").glob("data-*/mmnist-test.u8"))


def flat_frames_video(first: int, count: int) -> np.ndarray:
    """Frames of one flat gray value each, 3 apart from ``3 * first + 10``: a frame names itself after decoding."""
    values = 10 + 3 * np.arange(first, first + count)
    return np.broadcast_to(values[:, None, None, None], (count, 1, 64, 64)).astype(np.uint8)


def test_train_batches_are_deterministic_non_overlapping_chunks(tmp_path):
    lengths = [20, 25, 23]
    firsts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    write_split(tmp_path / "train-seq100", [flat_frames_video(f, n) for f, n in zip(firsts, lengths)])
    write_split(tmp_path / "test-seq1000", [smooth_video(10, 1)])
    data = open_dataset("mmnist", tmp_path)
    seq_len = 8  # 2 + 3 + 2 chunks; the remainders (4, 1, 7 frames) are dropped
    seen = set()
    for step in range(20):
        batch = data.train_batch(step, 3, seq_len, seed=5)
        assert batch.shape == (3, seq_len, 1, 64, 64)
        assert np.array_equal(batch, data.train_batch(step, 3, seq_len, seed=5))
        frame_ids = np.rint((batch.mean(axis=(2, 3, 4)) - 10) / 3).astype(int)
        for ids in frame_ids:
            video = np.searchsorted(firsts, ids[0], side="right") - 1
            assert np.array_equal(ids, ids[0] + np.arange(seq_len))  # consecutive frames
            assert (ids[0] - firsts[video]) % seq_len == 0 and ids[-1] < firsts[video] + lengths[video]
            seen.add(int(ids[0]))
        assert len(set(frame_ids[:, 0])) == 3  # no chunk twice in one batch
    assert len(seen) == 7
    assert not np.array_equal(data.train_batch(0, 3, seq_len, seed=5), data.train_batch(0, 3, seq_len, seed=6))


def test_generated_archive_matches_the_embedded_generator(tmp_path):
    generate_moving_mnist(tmp_path, num_train=2, num_test=2, train_length=12, test_length=16, speed=1.5, seed=3)
    assert sorted(p.name for p in (tmp_path / "test-seq1000").iterdir()) == ["00000.mp4", "00001.mp4"]
    data = open_dataset("mmnist", tmp_path)
    embedded = GeneratedMovingMNIST(speed=1.5, num_test=2, test_length=16, seed=3)
    for index in range(2):
        assert mae(data.test_video(index), embedded.test_video(index)) < 0.1  # measured ~0.02 on digits


def test_registry_names_and_defaults(tmp_path):
    assert DATASETS == ("mmnist", "gqn", "minerl", "kth")
    generated = open_dataset("mmnist", None, speed=2.0, seed=4)
    assert isinstance(generated, GeneratedMovingMNIST) and generated.speed == 2.0 and generated.seed == 4
    with pytest.raises(DatasetError) as excinfo:
        open_dataset("ucf101", None)
    assert "known datasets are mmnist, gqn, minerl, kth" in one_line_error(excinfo)
    for name, archive in [("gqn", "gqn_mazes.zip"), ("minerl", "minerl_navigate.zip"), ("kth", "KTH")]:
        with pytest.raises(DatasetError) as excinfo:
            open_dataset(name, None)
        assert "--data-dir" in one_line_error(excinfo) and archive in str(excinfo.value)
    make_mmnist(tmp_path)
    with pytest.raises(DatasetError, match="--speed only applies"):
        open_dataset("mmnist", tmp_path, speed=2.0)


def expect_error(name: str, data_dir, *needles: str) -> None:
    with pytest.raises(DatasetError) as excinfo:
        open_dataset(name, data_dir)
    message = one_line_error(excinfo)
    for needle in needles:
        assert needle in message, message


def test_missing_empty_and_wrong_layout_folders_say_what_was_expected(tmp_path):
    expect_error("mmnist", tmp_path / "nowhere", "does not exist", "moving_mnist_2digit.zip", "train-seq100/*.mp4")
    expect_error("mmnist", tmp_path, f"no videos in {tmp_path / 'train-seq100'}", "test-seq1000/*.mp4")
    expect_error("kth", tmp_path, "no videos", "person01_walking_d1_uncomp.avi")
    write_split(tmp_path / "train", [smooth_video(5, 3)])
    write_split(tmp_path / "test", [smooth_video(5, 3)])
    expect_error("mmnist", tmp_path, "no videos in", "found folders: test/, train/")
    expect_error("minerl", tmp_path / "train", "no videos in", "minerl_navigate/train/*.mp4")
    make_mmnist(tmp_path / "half", test_lengths=())
    expect_error("mmnist", tmp_path / "half", f"no videos in {tmp_path / 'half' / 'test-seq1000'}")
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    expect_error("gqn", tmp_path / "broken.zip", "neither a folder nor a readable .zip")


def test_a_file_that_is_not_a_video_is_named(tmp_path):
    make_mmnist(tmp_path)
    (tmp_path / "test-seq1000" / "00001.mp4").write_text("this is not a video")
    expect_error("mmnist", tmp_path, "00001.mp4", "cannot read")
    (tmp_path / "somebody.avi").write_bytes(b"")
    expect_error("kth", tmp_path, "cannot tell who is filmed", "somebody.avi")


def test_wrong_size_is_resized_and_wrong_channels_converted_with_warnings(tmp_path):
    make_mmnist(tmp_path / "mm", test_lengths=(12,))
    colored = smooth_video(12, 3, height=96, width=80, seed=7)
    write_split(tmp_path / "mm" / "test-seq1000", [colored], names=["00000.mp4"])
    with pytest.warns(UserWarning) as caught:
        video = open_dataset("mmnist", tmp_path / "mm").test_video(0)
    messages = [str(w.message) for w in caught]
    assert any("00000.mp4 has color" in m for m in messages)
    assert any("00000.mp4 is 80x96, not 64x64" in m for m in messages)
    assert video.shape == (12, 1, 64, 64)
    write_split(tmp_path / "gqn" / "train", [smooth_video(12, 3)])
    write_split(tmp_path / "gqn" / "test", [smooth_video(12, 1, seed=8)])
    with pytest.warns(UserWarning, match=r"test/00000.mp4 is gray but this dataset is RGB"):
        video = open_dataset("gqn", tmp_path / "gqn").test_video(0)
    assert video.shape == (12, 3, 64, 64)
    assert np.array_equal(video[:, 0], video[:, 2])


def test_sequence_longer_than_every_training_video_is_refused(tmp_path):
    make_mmnist(tmp_path)
    data = open_dataset("mmnist", tmp_path)
    assert data.train_batch(0, 2, 30, seed=0).shape == (2, 30, 1, 64, 64)
    with pytest.raises(DatasetError) as excinfo:
        data.train_batch(0, 2, 31, seed=0)
    assert "longest of the 3 training videos" in one_line_error(excinfo) and "has 30 frames" in str(excinfo.value)
