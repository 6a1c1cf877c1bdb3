"""scripts/system-deps.sh, which installs the Debian tools these tests drive, is a quiet no-op once they exist."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "system-deps.sh"


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("prometheus", "chromium", "chromedriver")), reason="tools not installed yet"
)
def test_second_run_is_silent_and_touches_nothing():
    out = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_script_is_strict_bash():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "set -euo pipefail" in SCRIPT.read_text()
