"""The attack scenario's guard: without defences, an attacker gone by the last step is an error that says so, never
judged as an attack that did no harm (the honest peers then trained without it)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.faultlib.attacks import _require_alive
from peer.children import Child


def _child(tmp_path, code: str) -> Child:
    log = tmp_path / "attacker.log"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Child("peer3", proc, log=log)


def test_a_dead_attacker_is_an_error_with_its_last_output(tmp_path):
    child = _child(tmp_path, "print('Traceback: the attacker crashed')")
    child.proc.wait(timeout=60)
    with pytest.raises(RuntimeError, match=r"(?s)attacker peer3 exited before step 8.*the attacker crashed"):
        _require_alive(child, 8)


def test_a_live_attacker_passes(tmp_path):
    child = _child(tmp_path, "import time; time.sleep(60)")
    try:
        _require_alive(child, 8)
    finally:
        child.proc.kill()
        child.proc.wait(timeout=60)
