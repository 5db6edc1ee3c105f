"""`pyro-cwvae data generate / info`, and `fit` on archive folders, through typer's test runner."""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from pyro_cwvae.cli.data import app
from pyro_cwvae.data import cache, video_io

runner = CliRunner()


@pytest.fixture(autouse=True)
def no_cache_override(monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)


def generate(out, *extra: str):
    return runner.invoke(app, ["generate", "mmnist", "--out", str(out), "--train", "3", "--test", "2",
                               "--train-length", "30", "--test-length", "40", "--seed", "1", *extra])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_generate_then_info_round_trip(tmp_path):
    result = generate(tmp_path / "mm")
    assert result.exit_code == 0, result.output
    assert "wrote 3 training videos" in result.stdout
    written = sorted(p.name for p in (tmp_path / "mm" / "train-seq100").iterdir())
    assert written == ["00000.mp4", "00001.mp4", "00002.mp4"]
    result = runner.invoke(app, ["info", str(tmp_path / "mm")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "mmnist dataset" in lines[0] and "moving_mnist_2digit.zip" in lines[0]
    assert lines[1].startswith("train: 3 videos in") and "30 frames each (the published archive has 100)" in lines[1]
    assert lines[2].startswith("test: 2 videos in") and "40 frames each" in lines[2]
    assert "64x64, stored as yuv420p, read as 1 channel" in lines[2]
    assert "not built yet" in lines[3]


def test_info_reports_mixed_sizes_and_rgb_layouts(tmp_path):
    for split, widths in (("train", (64, 64)), ("test", (64, 96))):
        folder = tmp_path / "minerl_navigate" / split
        folder.mkdir(parents=True)
        for index, width in enumerate(widths):
            video_io.write_video(folder / f"{index}.mp4", np.zeros((5 + index, 3, 64, width), np.uint8))
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "minerl dataset" in result.stdout
    assert "test: 2 videos" in result.stdout and "5-6 frames each" in result.stdout
    assert "64x64 (1 videos), 96x64 (1 videos)" in result.stdout and "read as 3 channels" in result.stdout


def test_generate_refuses_other_datasets_and_full_folders(tmp_path):
    result = runner.invoke(app, ["generate", "gqn", "--out", str(tmp_path)])
    assert_one_line_error(result, "only mmnist can be generated", "pyro-cwvae data download gqn --out DIR")
    assert_one_line_error(runner.invoke(app, ["generate", "ucf", "--out", str(tmp_path)]), "unknown dataset 'ucf'")
    assert generate(tmp_path).exit_code == 0
    written = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.mp4")}
    assert generate(tmp_path).exit_code == 0  # the same settings again: nothing missing, nothing rewritten
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*.mp4")} == written
    assert_one_line_error(generate(tmp_path, "--seed", "2"), "already holds videos, not those of an interrupted")
    assert_one_line_error(generate(tmp_path / "other", "--speed", "0"), "--speed must lie between 0.01 and 100")


def test_info_errors_are_one_line_with_exit_code_2(tmp_path):
    assert_one_line_error(runner.invoke(app, ["info", str(tmp_path / "nowhere")]), "does not exist")
    result = runner.invoke(app, ["info", str(tmp_path)])
    assert_one_line_error(result, "does not look like a published video archive", "gqn_mazes.zip")
    (tmp_path / "train-seq100").mkdir()
    assert_one_line_error(runner.invoke(app, ["info", str(tmp_path)]), f"no videos in {tmp_path / 'train-seq100'}")


def fit(tmp_path, dataset: str, data_dir) -> None:
    from pyro_cwvae.cli.app import app as main_app

    run_dir = tmp_path / f"run-{dataset}"
    result = runner.invoke(main_app, [
        "fit", "--dataset", dataset, "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--quiet",
        "--steps", "2", "--batch-size", "2", "--seq-len", "8", "--levels", "2", "--factor", "2",
    ])
    assert result.exit_code == 0, result.output
    assert "step 2:" in result.stdout
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["dataset"] == dataset and saved["data_dir"] == str(data_dir)


@pytest.mark.slow
def test_fit_trains_on_a_generated_mmnist_archive(tmp_path):
    assert generate(tmp_path / "mm").exit_code == 0
    fit(tmp_path, "mmnist", tmp_path / "mm")


@pytest.mark.slow
def test_fit_trains_on_a_tiny_gqn_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("test", 1)):
        (tmp_path / "gqn" / split).mkdir(parents=True)
        for index in range(count):
            noise = rng.integers(0, 256, (16, 3, 64, 64), dtype=np.uint8)
            video_io.write_video(tmp_path / "gqn" / split / f"{index}.mp4", noise)
    fit(tmp_path, "gqn", tmp_path / "gqn")


def test_an_interrupted_generate_writes_only_the_missing_videos_when_run_again(tmp_path, monkeypatch):
    from pyro_cwvae.data import generate as generating

    real, written = generating.write_video, []

    def interrupted_at_the_third(path, video, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(path)
        real(path, video, **kwargs)

    monkeypatch.setattr(generating, "write_video", interrupted_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        generating.generate_moving_mnist(tmp_path / "mm", num_train=3, num_test=2, train_length=30, test_length=40,
                                         seed=1)
    monkeypatch.undo()
    assert sorted(path.name for path in (tmp_path / "mm").rglob("*")) == [
        "00000.mp4", "00001.mp4", "generated.json", "train-seq100"]  # whole videos only
    kept = {path: path.stat().st_mtime_ns for path in (tmp_path / "mm").rglob("*.mp4")}
    killed = tmp_path / "mm" / "train-seq100" / ".00002.mp4.a1b2c3.tmp"  # atomic_path's naming: a write killed
    killed.write_bytes(b"half a video")
    resumed = generate(tmp_path / "mm")
    assert resumed.exit_code == 0 and "(2 of them kept from an earlier, interrupted run)" in resumed.output
    straight = generate(tmp_path / "straight")
    assert straight.exit_code == 0 and "kept" not in straight.output
    again = generate(tmp_path / "straight")
    assert again.exit_code == 0 and "nothing to write: the 3 training videos in" in again.output, again.output
    for path in (tmp_path / "straight").rglob("*.mp4"):
        resumed = tmp_path / "mm" / path.relative_to(tmp_path / "straight")
        assert np.array_equal(video_io.read_video(resumed, "resumed", 1), video_io.read_video(path, "straight", 1))
    assert all(path.stat().st_mtime_ns == time for path, time in kept.items())  # the first two left as they were
    assert not killed.exists()
