"""The child-process harness (peer.children): children that start children of their own are reaped whole, on a
normal exit and on an exception in the body; a stop signal gets its grace period; failed waits carry the log tail."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from peer.children import ChildExited, ProcessSet, session_pids, sessions_pids

REPO = Path(__file__).resolve().parents[2]
# a child with a grandchild; with "own" the grandchild is in a session of its own (as torchrun starts its ranks)
FAMILY = """
import subprocess, sys, time
grandchild = subprocess.Popen(["sleep", "300"], start_new_session=sys.argv[1] == "own")
print("ready", grandchild.pid, flush=True)
time.sleep(300)
"""


def start_family(procs: ProcessSet, own_session: bool) -> tuple[int, int]:
    """(child pid, grandchild pid) once both run."""
    child = procs.start("family", [sys.executable, "-c", FAMILY, "own" if own_session else "same"])
    grandchild = int(child.wait_for_line(re.compile(r"ready (\d+)"), timeout=60).group(1))
    return child.pid, grandchild


def test_process_set_reaps_a_child_session_even_when_the_body_raises(tmp_path):
    """A scenario that crashes must not leave its processes behind (the soak runs for an hour on shared CPUs)."""
    with pytest.raises(RuntimeError), ProcessSet(tmp_path) as procs:
        child, grandchild = start_family(procs, own_session=False)
        assert sorted(session_pids(child)) == sorted([child, grandchild])
        raise RuntimeError("scenario crashed")
    assert session_pids(child) == []


def test_process_set_reaps_a_grandchild_in_a_session_of_its_own_on_a_normal_exit(tmp_path):
    with ProcessSet(tmp_path, grace=0.5) as procs:
        child, grandchild = start_family(procs, own_session=True)
        assert session_pids(grandchild) == [grandchild]  # not in the child's session: found through its parent
    assert sessions_pids([child, grandchild]) == {child: [], grandchild: []}


def test_the_stop_signal_gets_its_grace_period_then_sigkill(tmp_path):
    """A child that handles SIGTERM exits by itself within the grace period; one that ignores it is killed, and
    close says which."""
    polite = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(print('bye', flush=True)))"
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)"
    procs = ProcessSet(tmp_path, grace=3.0)
    with procs:
        a = procs.start("polite", [sys.executable, "-c", polite + "\nprint('up', flush=True); time.sleep(300)"])
        b = procs.start("stubborn", [sys.executable, "-c", stubborn + "\nprint('up', flush=True); time.sleep(300)"])
        a.wait_for_line("up", 60)
        b.wait_for_line("up", 60)
        killed = procs.close()
    assert [c.name for c in killed] == ["stubborn"]
    assert a.proc.returncode == 0 and "bye" in a.text()
    assert b.proc.returncode == -signal.SIGKILL


def test_failed_waits_carry_the_log_tail(tmp_path):
    with ProcessSet(tmp_path, grace=0) as procs:
        quits = procs.start("quits", [sys.executable, "-c", "print('some last words'); raise SystemExit(3)"])
        last_words = r"quits exited with code 3: no 'never printed' in the log:\nsome last words"
        with pytest.raises(ChildExited, match=last_words):
            quits.wait_for_line("never printed", timeout=60)
        with pytest.raises(ChildExited, match="quits exited with code 3: the set"):
            procs.wait_until(lambda: None, timeout=60, what="the set")
        starting = "print('still starting', flush=True); import time; time.sleep(300)"
        slow = procs.start("slow", [sys.executable, "-c", starting])
        slow.wait_for_line("still starting", 60)
        with pytest.raises(TimeoutError, match=r"slow: no 'ready' in the log within 1 s:\nstill starting"):
            slow.wait_for_line("ready", timeout=1)


def test_a_child_that_is_not_ready_is_started_again_up_to_tries_times(tmp_path):
    """The first start fails (exits before its ready line), the second is ready; its first log is kept."""
    marker = tmp_path / "tried"
    code = f"import pathlib, sys, time\nm = pathlib.Path({str(marker)!r})\n"
    code += "if not m.exists():\n    m.touch(); sys.exit(1)\nprint('ready', flush=True); time.sleep(300)"
    with ProcessSet(tmp_path, grace=0) as procs:
        child = procs.start("flaky", [sys.executable, "-c", code], ready=lambda c: "ready" in c.text() or None, tries=2)
        assert child.alive() and len(procs.children) == 2
        assert len(list(tmp_path.glob("flaky.*.log"))) == 1  # the failed start's log
        with pytest.raises(ChildExited):
            procs.start("never", [sys.executable, "-c", "raise SystemExit(1)"], ready=lambda c: None, tries=2)
        assert len(list(tmp_path.glob("never*.log"))) == 2


def test_the_harness_imports_only_the_standard_library():
    """So that scripts/demo.py and bench/swarm.py (``--help`` included) import it without torch or hivemind."""
    code = "import sys, peer.children; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    foreign = set(out.stdout.split()) - set(sys.stdlib_module_names) - {"peer", "__main__"}
    assert foreign == set(), foreign
