"""The file helpers every writer and reader goes through: atomic writes and size-capped reads."""
from __future__ import annotations

import os
import stat

import pytest

from pyro_cwvae.errors import UserError
from pyro_cwvae.files import reading
from pyro_cwvae.files.atomic import write_text


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_an_atomic_write_gives_the_permissions_of_a_plain_write(tmp_path, umask):
    """The temporary file is private while it is written; the file in place has what ``open(..., "w")`` gives."""
    before = os.umask(umask)
    try:
        write_text(tmp_path / "atomic.json", "{}")
        with open(tmp_path / "plain.json", "w") as file:
            file.write("{}")
    finally:
        os.umask(before)
    modes = [stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("atomic.json", "plain.json")]
    assert modes[0] == modes[1] == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.json", "plain.json"]  # no temporary file left


def test_a_file_that_grows_past_its_cap_while_read_is_refused(tmp_path, monkeypatch):
    """The size is checked before the file is opened; a file that grows in between is still never read past the
    cap (here it is larger from the start, and the check before opening is skipped as if it had grown since)."""
    path = tmp_path / "config.json"
    path.write_bytes(b"x" * 101)
    monkeypatch.setattr(reading, "regular_file", lambda path, max_bytes, what: path)
    with pytest.raises(UserError, match="grew past 100 bytes while being read"):
        reading.read_bytes(path, 100, "run config")
    assert reading.read_bytes(path, 101, "run config") == b"x" * 101
