"""Reading files someone else made: only a regular file of a plausible size is opened (a FIFO would block the
reader forever, ``/dev/zero`` would never end), and text from a file reaches the terminal without escape codes or
other control characters (which could rewrite what the user sees)."""
from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from pyro_cwvae.errors import UserError

MAX_CONFIG_BYTES = 1 << 20
"""A config file (TOML or JSON) is a few hundred bytes."""
MAX_CHECKPOINT_BYTES = 64 << 30
"""A checkpoint is the weights and the Adam moments: the largest model a 80 GB GPU trains is well below this."""
CHECKPOINT = "checkpoint.pt"
"""The checkpoint file of a run directory."""

_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}
_ESCAPE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|.?)|\x9b[0-?]*[ -/]*[@-~]")


def regular_file(path: str | os.PathLike, max_bytes: int, what: str) -> Path:
    """``path`` when it is (or links to) a regular file of at most ``max_bytes``; ``UserError`` naming ``what`` and
    the file otherwise. Nothing is opened: a FIFO or a device is refused before any read could block or run on."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"cannot read {what} {printable(str(path))}: no such file") from None
    except OSError as error:
        raise UserError(f"cannot read {what} {printable(str(path))}: {error.strerror or error}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _KINDS.items() if test(info.st_mode)), "not a file")
        raise UserError(f"{what} {printable(str(path))} is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise UserError(f"{what} {printable(str(path))} has {info.st_size:,} bytes, more than the {max_bytes:,} "
                        f"such a file may have")
    return path


def checkpoint_file(run_dir: str | os.PathLike) -> Path:
    """The checkpoint file of ``run_dir``, a regular file of a plausible size; ``UserError`` in one line otherwise.
    Without torch, so that the command line refuses a mistyped run before it waits seconds for torch."""
    path = Path(run_dir) / CHECKPOINT
    if not os.path.lexists(path):  # anything else there (a FIFO, a folder, a broken link) is named as what it is
        raise UserError(f"no checkpoint in {run_dir}: expected {path}")
    return regular_file(path, MAX_CHECKPOINT_BYTES, "checkpoint")


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (``regular_file``), never more, even if it grows."""
    path = regular_file(path, max_bytes, what)
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as error:
        raise UserError(f"cannot read {what} {printable(str(path))}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what} {printable(str(path))} grew past {max_bytes:,} bytes while being read")
    return data


def printable(text: str) -> str:
    """``text`` as the terminal may show it: escape sequences removed, other control and format characters (line
    breaks, bidirectional overrides) shown as ``?``."""
    text = _ESCAPE.sub("", str(text))
    return "".join(char if char.isprintable() or char == " " else "?" for char in text)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's may run over many), as the terminal may show it."""
    return printable(next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__))
