"""The one check of a directory a process is told to write into (``--data_dir``, ``--out``): made before any work,
so a bad path is refused at once with one line and nothing fetched or grown; and the one way a whole new directory
(a grown model, an export) is written (``staged_dir``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peer.errors import UserError


def check_writable_dir(path: Path, flag: str = "--data_dir") -> None:
    """``path`` (given as ``flag``) is a directory this process may write into, or one it can create."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is not a directory")
    existing = path.absolute()
    while not existing.exists():  # the nearest ancestor that exists is where the directory would be created
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{flag} {path} is not a directory: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path.absolute() else f" (cannot create it in {existing})"
        raise UserError(f"{flag} {path} is not writable{where}")


def check_empty_out(out: Path, flag: str = "--out") -> None:
    """``out`` (given as ``flag``) may receive a whole new directory: it does not exist or is empty, and it can be
    written."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{flag} {out} already exists and is not an empty dir")
    check_writable_dir(out, flag)


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` to write into; renamed to ``out`` when the block ends, removed when it
    raises. Why: a reader (a peer comparing sha256s, a user loading an export) must see the whole directory or
    none, and a crash, Ctrl-C or full disk must leave nothing at ``out``. ``out`` must not exist or be empty."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()  # empty (checked by the caller); rename cannot replace a directory
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
