"""Input files a user names (scenario, trace, stream): read only what is safe to read.

A file named in a shared scenario may be anything: ``/dev/zero`` (endless), a FIFO
(blocks forever), a device, or simply huge. Each is refused up front with the kind of
file found, before a byte is read, and no more than the limit is ever read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class InputError(ValueError):
    """An input file refused before it is parsed: ``expected`` and ``found`` say why."""

    def __init__(self, expected: str, found: str):
        self.expected, self.found = expected, found
        super().__init__(f"expected {expected}, found {found}")


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input(path: str | Path, limit: int, what: str) -> int:
    """The size of ``path`` if it is a regular file of at most ``limit`` bytes, else
    ``InputError`` (``FileNotFoundError`` / ``IsADirectoryError`` as usual)."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(path)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"a regular {what}", file_kind(st.st_mode))
    if st.st_size > limit:
        raise InputError(f"a {what} of at most {_mib(limit)}", f"{st.st_size:,} bytes")
    return st.st_size


def read_input(path: str | Path, limit: int, what: str, *, binary: bool = False):
    """Read a user-named input file after ``check_input``; text is UTF-8."""
    check_input(path, limit, what)
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:     # it grew since the stat
        raise InputError(f"a {what} of at most {_mib(limit)}", "a file still growing")
    return data if binary else data.decode("utf-8")


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
