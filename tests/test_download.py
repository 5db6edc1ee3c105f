"""`pyro-cwvae data download` against a local HTTP server (127.0.0.1 only) serving a small Moving MNIST archive in
the real layout, with the recorded size and checksum patched to it."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pyro_cwvae.cli.data import app
from pyro_cwvae.data import DatasetError, cache, download
from pyro_cwvae.data.generate import generate_moving_mnist

runner = CliRunner()
ARCHIVE = "moving_mnist_2digit.zip"


class RangeHandler(BaseHTTPRequestHandler):
    """Serves the server's ``files`` (name -> bytes), honouring ``Range: bytes=N-`` unless told to ignore it; can
    fail with a status, or cut the connection after ``cut_after`` body bytes. Every request is recorded."""

    def do_GET(self):  # noqa: N802 (the http.server name)
        server = self.server
        name = self.path.lstrip("/")
        data = server.files.get(name)
        start = 0
        header = self.headers.get("Range")
        server.log.append({"path": name, "range": header})
        if server.fail_with or data is None:
            self.send_error(server.fail_with or 404)
            return
        if header and not server.ignore_range:
            start = int(header.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None:
            body = body[: server.cut_after]
        self.wfile.write(body)
        server.log[-1]["sent"] = len(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.daemon_threads = True
    httpd.files, httpd.log = {}, []
    httpd.fail_with, httpd.ignore_range, httpd.cut_after = None, False, None
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def mmnist_zip(tmp_path_factory) -> bytes:
    """The layout `pyro-cwvae data generate mmnist` writes (train-seq100/, test-seq1000/), zipped."""
    folder = tmp_path_factory.mktemp("mm")
    generate_moving_mnist(folder, num_train=2, num_test=1, train_length=6, test_length=8, seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*.mp4")):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def setup(monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setattr(download, "TIMEOUT_S", 10.0)


def record(monkeypatch, data: bytes, algorithm: str = "sha256") -> None:
    """Patch the recorded size and checksum of the mmnist archive to those of ``data``."""
    entry = download.PUBLISHED["mmnist"][0]
    values = {"size": len(data), algorithm: hashlib.new(algorithm, data).hexdigest()}
    monkeypatch.setitem(download.PUBLISHED, "mmnist", (replace(entry, **values),))


def fetch(server, out: Path, *extra: str):
    return runner.invoke(app, ["download", "mmnist", "--out", str(out), "--url", server.base + ARCHIVE, "--quiet",
                               *extra])


def assert_one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def videos(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mp4"))


def test_full_download_unpacks_and_describes(server, mmnist_zip, monkeypatch, tmp_path):
    server.files[ARCHIVE] = mmnist_zip
    record(monkeypatch, mmnist_zip)
    result = fetch(server, tmp_path / "data")
    assert result.exit_code == 0, result.output
    out = tmp_path / "data"
    assert videos(out) == ["test-seq1000/00000.mp4", "train-seq100/00000.mp4", "train-seq100/00001.mp4"]
    assert (out / ARCHIVE).read_bytes() == mmnist_zip and not (out / (ARCHIVE + ".part")).exists()
    assert "as recorded" in result.stdout and "unpacked 3 files" in result.stdout
    assert f"{out}: mmnist dataset" in result.stdout and "train: 2 videos" in result.stdout
    assert server.log == [{"path": ARCHIVE, "range": None, "sent": len(mmnist_zip)}]
    again = fetch(server, out, "--no-keep-archive")  # reuses the checked archive, then deletes it
    assert again.exit_code == 0, again.output
    assert "reusing the checked" in again.stdout and len(server.log) == 1 and not (out / ARCHIVE).exists()


def test_interrupted_download_resumes_with_the_remaining_bytes(server, mmnist_zip, monkeypatch, tmp_path):
    server.files[ARCHIVE] = mmnist_zip
    record(monkeypatch, mmnist_zip)
    server.cut_after = 1000  # the connection drops after 1000 bytes of the body
    first = fetch(server, tmp_path)
    assert_one_line_error(first, "stopped after 1000 of", "run the command again to resume")
    assert (tmp_path / (ARCHIVE + ".part")).stat().st_size == 1000 and videos(tmp_path) == []
    server.cut_after = None
    second = fetch(server, tmp_path)
    assert second.exit_code == 0, second.output
    assert server.log[-1] == {"path": ARCHIVE, "range": "bytes=1000-", "sent": len(mmnist_zip) - 1000}
    assert (tmp_path / ARCHIVE).read_bytes() == mmnist_zip and len(videos(tmp_path)) == 3


def test_a_truncated_part_is_resumed_and_a_server_ignoring_range_starts_over(server, mmnist_zip, monkeypatch,
                                                                            tmp_path):
    server.files[ARCHIVE] = mmnist_zip
    record(monkeypatch, mmnist_zip)
    for ignore, out in ((False, tmp_path / "a"), (True, tmp_path / "b")):
        out.mkdir()
        (out / (ARCHIVE + ".part")).write_bytes(mmnist_zip[:777])
        server.ignore_range = ignore
        result = fetch(server, out)
        assert result.exit_code == 0, result.output
        assert server.log[-1]["range"] == "bytes=777-"
        assert server.log[-1]["sent"] == len(mmnist_zip) - (0 if ignore else 777)
        assert (out / ARCHIVE).read_bytes() == mmnist_zip
    (tmp_path / "c").mkdir()  # a .part that is already whole: the server answers 416, the file is checked
    (tmp_path / "c" / (ARCHIVE + ".part")).write_bytes(mmnist_zip)
    server.ignore_range = False
    assert fetch(server, tmp_path / "c").exit_code == 0 and len(videos(tmp_path / "c")) == 3


@pytest.mark.parametrize("algorithm", ["sha256", "md5"])
def test_a_corrupted_download_is_refused_and_deleted(server, mmnist_zip, monkeypatch, tmp_path, algorithm):
    record(monkeypatch, mmnist_zip, algorithm)
    corrupted = bytearray(mmnist_zip)
    corrupted[len(corrupted) // 2] ^= 0xFF
    server.files[ARCHIVE] = bytes(corrupted)
    line = assert_one_line_error(fetch(server, tmp_path), f"has {algorithm} ", "expected", "deleted")
    assert hashlib.new(algorithm, mmnist_zip).hexdigest() in line
    assert list(tmp_path.iterdir()) == []  # nothing unpacked, no .part left
    server.files[ARCHIVE] = mmnist_zip[:-10]
    assert_one_line_error(fetch(server, tmp_path), f"is {len(mmnist_zip) - 10} bytes, expected {len(mmnist_zip)}")
    assert list(tmp_path.iterdir()) == []


def test_without_recorded_values_the_declared_length_is_checked_and_sha256_shown(server, mmnist_zip, tmp_path):
    server.files[ARCHIVE] = mmnist_zip
    assert download.PUBLISHED["mmnist"][0].sha256 is None  # nothing is published for the real archive
    result = fetch(server, tmp_path)
    assert result.exit_code == 0, result.output
    assert hashlib.sha256(mmnist_zip).hexdigest() in result.stdout
    assert "no size or checksum is published" in result.stdout
    (tmp_path / "long").mkdir()  # a .part longer than the file: the 416 answer's length refuses it
    (tmp_path / "long" / (ARCHIVE + ".part")).write_bytes(mmnist_zip + b"junk")
    line = assert_one_line_error(fetch(server, tmp_path / "long"), "deleted")
    assert f"is {len(mmnist_zip) + 4} bytes, expected {len(mmnist_zip)}" in line
    assert list((tmp_path / "long").iterdir()) == []


def test_an_archive_left_in_the_folder_is_checked_before_it_is_reused(server, mmnist_zip, monkeypatch, tmp_path):
    record(monkeypatch, mmnist_zip)
    damaged = bytearray(mmnist_zip)
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / ARCHIVE).write_bytes(bytes(damaged))  # the recorded size, other bytes
    assert_one_line_error(fetch(server, tmp_path), "has sha256 ", "expected", "deleted")
    assert list(tmp_path.iterdir()) == [] and server.log == []  # nothing unpacked, nothing fetched yet
    server.files[ARCHIVE] = mmnist_zip
    result = fetch(server, tmp_path)  # the next run downloads it afresh
    assert result.exit_code == 0, result.output
    assert (tmp_path / ARCHIVE).read_bytes() == mmnist_zip and len(videos(tmp_path)) == 3


def test_a_link_in_the_folder_to_outside_is_not_unpacked_through(server, mmnist_zip, monkeypatch, tmp_path):
    server.files[ARCHIVE] = mmnist_zip
    record(monkeypatch, mmnist_zip)
    out, outside = tmp_path / "out", tmp_path / "outside"
    outside.mkdir()
    out.mkdir()
    (out / "train-seq100").symlink_to(outside, target_is_directory=True)
    assert_one_line_error(fetch(server, out), "refusing to unpack", "would land outside the folder")
    assert list(outside.iterdir()) == []


def escaping_zip(kind: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("train-seq100/00000.mp4", b"not really a video")
        if kind == "symlink":
            info = zipfile.ZipInfo("train-seq100/link.mp4")
            info.external_attr = 0o120777 << 16
            zf.writestr(info, "../../outside.mp4")
        else:
            zf.writestr({"dotdot": "../outside.mp4", "absolute": "/tmp/outside-pyro-cwvae.mp4"}[kind], b"escaped")
    return buffer.getvalue()


@pytest.mark.parametrize("kind, why", [("dotdot", "climbs out with '..'"), ("absolute", "is an absolute path"),
                                       ("symlink", "is a link")])
def test_a_member_escaping_the_folder_is_refused(server, monkeypatch, tmp_path, kind, why):
    data = escaping_zip(kind)
    server.files[ARCHIVE] = data
    record(monkeypatch, data)
    out = tmp_path / "out"
    assert_one_line_error(fetch(server, out), "refusing to unpack", why, "nothing was unpacked")
    assert not (out / "train-seq100").exists() and not (tmp_path / "outside.mp4").exists()
    assert not Path("/tmp/outside-pyro-cwvae.mp4").exists()


def test_tar_members_are_checked_too(tmp_path):
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("train/evil.mp4")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DatasetError, match="is a link"):
        download.unpack(archive, tmp_path / "out")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tf:
        info = tarfile.TarInfo("train/a.mp4")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    assert download.unpack(good, tmp_path / "out") == 1 and (tmp_path / "out/train/a.mp4").read_bytes() == b"abc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("status", [404, 500, "refused"])
def test_a_server_error_is_one_line_with_exit_code_2(server, tmp_path, status):
    if status == "refused":
        url = f"http://127.0.0.1:{free_port()}/{ARCHIVE}"
        result = runner.invoke(app, ["download", "mmnist", "--out", str(tmp_path), "--url", url, "--quiet"])
        assert_one_line_error(result, "cannot download", "refused")
    else:
        server.files[ARCHIVE] = b"x"
        server.fail_with = status
        assert_one_line_error(fetch(server, tmp_path), "cannot download", f"HTTP {status}")
    assert not any(tmp_path.rglob("*.part"))


def test_sources_and_unknown_datasets():
    kth = download.sources("kth", "http://127.0.0.1:1/mirror/")
    assert [s.url for s in kth][:2] == ["http://127.0.0.1:1/mirror/walking.zip",
                                        "http://127.0.0.1:1/mirror/jogging.zip"]
    assert [s.into for s in kth] == list(download.KTH_ACTIONS)
    assert download.sources("gqn")[0].url == "https://archive.org/download/gqn_mazes/gqn_mazes.zip"
    with pytest.raises(DatasetError, match="give --url as a folder"):
        download.sources("kth", "http://127.0.0.1:1/walking.zip")
    assert_one_line_error(runner.invoke(app, ["download", "ucf", "--out", "x"]), "unknown dataset 'ucf'")
