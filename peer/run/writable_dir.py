"""The one check of a directory a process is told to write into (``--data_dir``, ``--out``): made before any work,
so a bad path is refused at once with one line and nothing fetched or grown."""

from __future__ import annotations

import os
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
