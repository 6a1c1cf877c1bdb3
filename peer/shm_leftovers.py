"""Shared-memory files that killed processes left in /dev/shm, removed before a new peer or coordinator starts.

Why: hivemind shares its averagers' tensors and every MPFuture's state through torch's ``file_system`` strategy
(``hivemind.utils.mpfuture`` sets it), which backs each shared tensor with a file ``/dev/shm/torch_<pid>_<n>_<k>``
named after the process that made it. A process that exits normally frees them; one that is SIGKILLed (the kernel's
OOM killer, a supervisor's last resort after its grace period) leaves them, and nothing removes them until the
machine reboots. /dev/shm is memory: measured on this project's 2-core, 24 GiB machines, one killed demo peer (the
768x6 model) left 1.96 GB in 1 673 files, each killed ``peer join`` of the overhead bench 280 MB, and a day of test
runs 10.1 GB; a volunteer's peer that is OOM-killed and restarted by systemd would leave more memory to the next OOM
each time.

What is removed: files named ``torch_<pid>_*``, owned by this user, whose ``<pid>`` is not a running process. That is
safe for any torch program, not only ours: removing a name does not unmap it, so a process that still maps the file
(a child of the dead process, during its last second) keeps its memory until it unmaps; only a new open *by name*
of a dead process's tensor would fail, and hivemind already treats that as "the origin is gone". A pid that was
reused by a new process keeps its old files (a missed clean-up, never a wrong one).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
TORCH_FILE = re.compile(r"^torch_(\d+)_")


@dataclass(frozen=True)
class Removed:
    files: int
    bytes: int


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_processes_files(shm_dir: Path = SHM_DIR) -> Removed:
    """Removes ``shm_dir``'s torch shared-memory files of processes that no longer run (see the module docstring)
    and logs one line when it removed any. Never raises: a machine without /dev/shm, or a file another process
    removed first, is not an error."""
    files = size = 0
    uid = os.getuid()
    alive: dict[int, bool] = {}
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return Removed(0, 0)
    for entry in entries:
        found = TORCH_FILE.match(entry.name)
        if not found:
            continue
        pid = int(found.group(1))
        if alive.setdefault(pid, _running(pid)):
            continue
        try:
            stat = entry.stat(follow_symlinks=False)
            if stat.st_uid != uid:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        files, size = files + 1, size + stat.st_size
    if files:
        logger.info(
            "removed %d shared-memory files (%.1f MB) that killed processes left in %s", files, size / 1e6, shm_dir
        )
    return Removed(files, size)
