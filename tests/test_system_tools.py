"""A test whose external tool is missing fails under CI=true, naming the tool, its package and
scripts/system-deps.sh, and skips with that reason elsewhere (tests/system_tools.py and the requires_tool marker).

A tool is made "missing" by a PATH of links to every other command (path_without), so nothing is removed from the
machine; the end-to-end cases run real tests of this suite in a child pytest with that PATH.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from system_tools import ROOT, in_ci, path_without, read_tools, require_module, require_tool

REASON = "{tool} is missing (Debian package {package}): run scripts/system-deps.sh"


def test_the_list_names_every_tool_with_one_package_and_source():
    tools = read_tools()
    assert {"prometheus", "promtool", "chromium", "kubectl", "systemd-analyze", "curl", "hadolint"} <= set(tools)
    assert tools["promtool"].package == "prometheus" and tools["hadolint"].source == "pip"
    assert all(tool.source in ("apt", "pip") for tool in tools.values())


def test_a_malformed_line_is_an_error_not_a_lost_tool(tmp_path):
    bad = tmp_path / "system-deps.txt"
    bad.write_text("# tool source package\ncurl apt curl\nkubectl snap\n")
    with pytest.raises(ValueError, match="system-deps.txt:3"):
        read_tools(bad)


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("True", True), ("1", True), ("yes", True), ("", False), ("false", False)]
)
def test_ci_is_recognised_as_runners_set_it(value, ci):
    assert in_ci({"CI": value}) is ci


def test_an_unlisted_tool_is_a_programming_error():
    with pytest.raises(KeyError, match="not in scripts/system-deps.txt"):
        require_tool("docker")


@pytest.mark.requires_tool("curl")
def test_require_tool_returns_the_path_or_fails_in_ci_or_skips(tmp_path, monkeypatch):
    assert Path(require_tool("curl")).name == "curl"
    monkeypatch.setenv("PATH", path_without(["curl"], tmp_path / "bin"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_tool("curl")
    assert str(failed.value).startswith(REASON.format(tool="curl", package="curl"))
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_tool("curl")
    assert str(skipped.value) == REASON.format(tool="curl", package="curl")


def test_require_module_treats_only_the_tool_itself_missing_as_missing(monkeypatch):
    assert require_module("playwright.sync_api").__name__ == "playwright.sync_api"
    for name in ("playwright", "playwright.sync_api"):
        monkeypatch.setitem(sys.modules, name, None)  # what an uninstalled package looks like to import
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"playwright is missing \(PyPI package playwright"):
        require_module("playwright.sync_api")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        require_module("playwright.sync_api")


def _child_pytest(test: str, hidden: list[str], ci: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env |= {"CI": ci, "PATH": path_without(hidden, tmp_path / "bin")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", test]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


# One test of each way the check is reached: the marker (checked before the fixtures start a coordinator and a
# browser) and require_tool() inside the test body.
CASES = {
    "marker": ("tests/coordinator/api/test_dashboard_browser.py", ["chromium*"], "chromium", "chromium"),
    "in the body": (
        "tests/deploy/test_deploy_k8s.py::test_kubectl_kustomize_builds_the_manifests",
        ["kubectl"],
        "kubectl",
        "kubernetes-client",
    ),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_real_test_fails_in_ci_and_skips_elsewhere_without_its_tool(case, tmp_path):
    test, hidden, tool, package = CASES[case]
    reason = REASON.format(tool=tool, package=package)
    failed = _child_pytest(test, hidden, "true", tmp_path / "ci")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert f"Failed: {reason} (CI=true: a missing tool fails, it does not skip)" in failed.stdout
    assert "passed" not in failed.stdout.splitlines()[-1] and "skipped" not in failed.stdout.splitlines()[-1]
    skipped = _child_pytest(test, hidden, "", tmp_path / "dev")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    skip_lines = [line for line in skipped.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skip_lines and all(line.endswith(f": {reason}") for line in skip_lines), skipped.stdout
    assert all(test.split("::")[0] in line for line in skip_lines), "reported at the test, not at the helper"



HANDWRITTEN = '''
import shutil

import pytest


@pytest.mark.skipif(shutil.which("no-such-tool") is None, reason="no-such-tool missing: run scripts/system-deps.sh")
def test_marker_skip():
    pass


def test_body_skip():
    pytest.skip("no-such-tool not installed (scripts/system-deps.sh installs it)")


def test_other_skip():
    pytest.skip("not on this platform")


@pytest.mark.xfail(reason="known bug, not a tool: scripts/system-deps.sh is not the fix")
def test_xfail():
    raise AssertionError
'''


@pytest.mark.parametrize("ci", ["true", ""])
def test_a_handwritten_missing_tool_skip_fails_in_ci_too(tmp_path, ci):
    """The backstop for skips that bypass requires_tool: under CI=true one that points at scripts/system-deps.sh
    fails; other skips and xfails are left alone. The suite's conftest runs as a plugin on a file outside tests/."""
    (tmp_path / "test_handwritten.py").write_text(HANDWRITTEN)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env |= {"CI": ci, "PYTHONPATH": str(ROOT / "tests")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rfEsx", "-p", "no:cacheprovider", "-p", "conftest",
           "--rootdir", str(tmp_path), "-c", os.devnull, "test_handwritten.py"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    summary = out.stdout.strip().splitlines()[-1]
    if ci:
        assert out.returncode == 1, out.stdout + out.stderr
        assert summary.startswith("1 failed, 1 skipped, 1 xfailed, 1 error"), out.stdout
        assert out.stdout.count("(CI=true: a missing tool fails; use requires_tool)") >= 2, out.stdout
        assert re.search(r"^SKIPPED \[1\] test_handwritten.py:\d+: not on this platform$", out.stdout, re.M), out.stdout
    else:
        assert out.returncode == 0, out.stdout + out.stderr
        assert summary.startswith("3 skipped, 1 xfailed"), out.stdout
