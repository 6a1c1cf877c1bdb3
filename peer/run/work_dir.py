"""Where a peer keeps what it downloads and grows (the coordinator's checkpoints, the run's step-0 state): the
directory ``--work_dir`` names, else ``$XDG_CACHE_HOME/warmswarm/<run_id>`` (``~/.cache/warmswarm/<run_id>`` when the
variable is unset), outside whatever directory the user started in.

Why ``$XDG_CACHE_HOME``: it is how a service manager or an image moves caches off a read-only home — the systemd
units point it at their ``CacheDirectory=``, the Docker image at its ``/cache`` volume — and everything in the work
dir can be fetched or grown again, so it is a cache. Hugging Face's own default (``$XDG_CACHE_HOME/huggingface``)
follows the same variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from peer.errors import UserError
from peer.run.writable_dir import check_writable_dir


def cache_home(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME``, or ``~/.cache`` when it is unset, empty or relative (the XDG base directory spec says a
    relative path there is invalid and is to be ignored)."""
    value = environ.get("XDG_CACHE_HOME", "")
    if value and Path(value).is_absolute():
        return Path(value)
    home = environ.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache"


def peer_work_dir(run_id: str, given: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """The peer's work dir: ``given`` (``--work_dir``), else the default under :func:`cache_home`; checked to be a
    directory this process can create or write into, so that a read-only home is one clear line, not a traceback."""
    if given:
        path = Path(given)
        check_writable_dir(path, "--work_dir")
        return path
    path = cache_home(environ) / "warmswarm" / run_id
    try:
        check_writable_dir(path, "the work dir")
    except UserError as e:
        raise UserError(f"{e}: give a writable one with --work_dir DIR, or set XDG_CACHE_HOME") from None
    return path
