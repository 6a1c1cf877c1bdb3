"""``peer.shm_leftovers``: the /dev/shm files a SIGKILLed torch process left are removed; a live process's are kept."""

from __future__ import annotations

import mmap
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from peer.shm_leftovers import remove_dead_processes_files

MAKE_AND_WAIT = textwrap.dedent(
    """
    import sys, time, torch, torch.multiprocessing
    torch.multiprocessing.set_sharing_strategy("file_system")  # as hivemind sets it
    t = torch.zeros(1_000_000).share_memory_()
    print("ready", flush=True)
    time.sleep(600)
    """
)


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_only_files_of_processes_that_no_longer_run_are_removed(tmp_path: Path):
    gone = dead_pid()
    (tmp_path / f"torch_{gone}_123_0").write_bytes(b"x" * 1000)
    (tmp_path / f"torch_{gone}_123_1").write_bytes(b"x" * 24)
    (tmp_path / f"torch_{os.getpid()}_5_0").write_bytes(b"mine")
    (tmp_path / "other_file").write_bytes(b"kept")
    (tmp_path / f"torchx_{gone}_1").write_bytes(b"not torch's name")

    removed = remove_dead_processes_files(tmp_path)

    assert (removed.files, removed.bytes) == (2, 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"torch_{os.getpid()}_5_0", "other_file", f"torchx_{gone}_1"]
    )


def test_a_dead_process_file_that_a_running_process_maps_or_holds_open_is_kept(tmp_path: Path):
    """torch's last user of a shared storage removes its file itself and aborts if it is gone: a file still mapped
    (an averager's download held by its parent) must stay until nobody uses it."""
    gone = dead_pid()
    mapped, opened = tmp_path / f"torch_{gone}_1_0", tmp_path / f"torch_{gone}_1_1"
    mapped.write_bytes(b"x" * 4096)
    opened.write_bytes(b"y" * 10)
    with mapped.open("r+b") as f, mmap.mmap(f.fileno(), 4096) as view:
        f.close()  # only the mapping is left
        with opened.open("rb"):
            assert remove_dead_processes_files(tmp_path).files == 0  # one mapped, one open: both in use
        assert remove_dead_processes_files(tmp_path).files == 1  # the closed one goes
        assert not opened.exists() and mapped.exists() and view[:1] == b"x"
    assert remove_dead_processes_files(tmp_path).files == 1  # unmapped: it goes too
    assert not mapped.exists()


def test_a_missing_directory_is_not_an_error(tmp_path: Path):
    assert remove_dead_processes_files(tmp_path / "absent").files == 0


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm on this system")
@pytest.mark.timeout(120)
def test_the_shared_tensor_of_a_sigkilled_torch_process_is_left_in_dev_shm_then_removed():
    proc = subprocess.Popen([sys.executable, "-c", MAKE_AND_WAIT], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        mine = sorted(Path("/dev/shm").glob(f"torch_{proc.pid}_*"))
        assert mine and sum(p.stat().st_size for p in mine) >= 4_000_000
        remove_dead_processes_files()
        assert all(p.exists() for p in mine)  # its process runs: kept
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    assert all(p.exists() for p in mine)  # nothing freed them: the leak this module exists for
    removed = remove_dead_processes_files()
    assert removed.files >= len(mine)
    assert not any(p.exists() for p in mine)
