"""Shared-memory files that killed processes left in /dev/shm, removed before a new peer or coordinator starts.

Why: hivemind shares its averagers' tensors and every MPFuture's state through torch's ``file_system`` strategy
(``hivemind.utils.mpfuture`` sets it), which backs each shared tensor with a file ``/dev/shm/torch_<pid>_<n>_<k>``
named after the process that made it. A process that exits normally frees them; one that is SIGKILLed (the kernel's
OOM killer, a supervisor's last resort after its grace period) leaves them, and nothing removes them until the
machine reboots. /dev/shm is memory: measured on this project's 2-core, 24 GiB machines, one killed demo peer (the
768x6 model) left 1.96 GB in 1 673 files, each killed ``peer join`` of the overhead bench 280 MB, and a day of test
runs 10.1 GB; a volunteer's peer that is OOM-killed and restarted by systemd would leave more memory to the next OOM
each time.

What is removed: files named ``torch_<pid>_*``, owned by this user, whose ``<pid>`` is not a running process and that
no running process maps or holds open. The last condition matters: torch's file_system storages are reference
counted across processes, and whichever process frees the last reference removes the file itself and aborts
(``could not unlink the shared memory file``) when it is already gone. A tensor made by a process that has since
exited can still be alive elsewhere: the state an averager process downloaded, held by its parent. (The first
version of this module skipped that check, and the test suite aborted in garbage collection after an in-process CLI
call removed such a file.) A pid that was reused by a new process keeps its old files (a missed clean-up, never a
wrong one).
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


def _in_use(shm_dir: Path) -> set[str]:
    """Names of ``shm_dir``'s files that a running process maps (``/proc/PID/maps``) or holds open
    (``/proc/PID/fd``), among the processes this user can read."""
    prefix = str(shm_dir).rstrip("/") + "/"
    names: set[str] = set()
    try:
        pids = [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()]
    except OSError:
        return names
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    at = line.find(prefix)
                    if at >= 0:
                        names.add(line[at + len(prefix) :].split()[0])
            for fd in os.scandir(f"/proc/{pid}/fd"):
                target = os.readlink(fd.path)
                if target.startswith(prefix):
                    names.add(target[len(prefix) :].split()[0])
        except OSError:  # exited meanwhile, or another user's
            continue
    return names


def remove_dead_processes_files(shm_dir: Path = SHM_DIR) -> Removed:
    """Removes ``shm_dir``'s torch shared-memory files of processes that no longer run and that no running process
    uses (see the module docstring), and logs one line when it removed any. Never raises: a machine without
    /dev/shm, or a file another process removed first, is not an error."""
    files = size = 0
    uid = os.getuid()
    alive: dict[int, bool] = {}
    try:
        entries = list(os.scandir(shm_dir))
    except OSError:
        return Removed(0, 0)
    candidates = []
    for entry in entries:
        found = TORCH_FILE.match(entry.name)
        if found and not alive.setdefault(int(found.group(1)), _running(int(found.group(1)))):
            candidates.append(entry)
    used = _in_use(shm_dir) if candidates else set()
    for entry in candidates:
        if entry.name in used:
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
