"""The external tools the integration tests drive, and what a test does when one is missing.

Why this exists: a test that skips when its tool is missing lets CI go green without ever running it. With CI=true
a missing tool is a test failure that names the tool and its package and says to run ``scripts/system-deps.sh``;
elsewhere (a laptop without Chromium) it is a skip with that same reason, which ``scripts/test.sh`` prints. The tools
and their packages are read from ``scripts/system-deps.txt``, the list ``scripts/system-deps.sh`` installs from, so
what the tests demand and what the script installs cannot drift apart.

Tests use it through ``@pytest.mark.requires_tool("name", ...)`` (checked by tests/conftest.py before any fixture
starts) or, where the path is needed, ``require_tool("name")`` / ``require_module("package.module")``.
"""

from __future__ import annotations

import fnmatch
import importlib
import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOLS_LIST = ROOT / "scripts" / "system-deps.txt"
SOURCES = {"apt": "Debian package {}", "pip": "PyPI package {} of the dev extras"}


@dataclass(frozen=True)
class Tool:
    """One line of scripts/system-deps.txt: a command, and the package that provides it."""

    name: str
    source: str  # apt | pip
    package: str

    def missing_reason(self) -> str:
        return f"{self.name} is missing ({SOURCES[self.source].format(self.package)}): run scripts/system-deps.sh"


def read_tools(path: Path = TOOLS_LIST) -> dict[str, Tool]:
    """``{command: Tool}`` from the list; a malformed line is an error here, not a silently lost tool."""
    tools = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or fields[1] not in SOURCES:
            raise ValueError(f"{path.name}:{number}: want `tool apt|pip package`, got {line!r}")
        tools[fields[0]] = Tool(*fields)
    return tools


def in_ci(environ: Mapping[str, str] = os.environ) -> bool:
    """CI=true (GitHub, GitLab and most runners), also 1/yes; the same rule as scripts/system-deps.sh."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def find_tool(name: str) -> str | None:
    """A command from the venv this test runs in (pip-installed tools) or from PATH (Debian packages)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


def _known(name: str) -> Tool:
    tools = read_tools()
    if name not in tools:
        raise KeyError(f"{name} is not in {TOOLS_LIST.relative_to(ROOT)}: add it there so system-deps.sh installs it")
    return tools[name]


def tool_missing(tool: Tool, *, module_level: bool = False) -> NoReturn:
    """Fails the test under CI=true, skips it (with the reason) elsewhere."""
    if in_ci():
        pytest.fail(f"{tool.missing_reason()} (CI=true: a missing tool fails, it does not skip)", pytrace=False)
    pytest.skip(tool.missing_reason(), allow_module_level=module_level)


def require_tool(name: str) -> str:
    """The path of the command ``name`` (listed in scripts/system-deps.txt); fails or skips the test without it."""
    tool = _known(name)
    found = find_tool(tool.name)
    if found is None:
        tool_missing(tool)
    return found


def require_module(module: str) -> ModuleType:
    """Imports ``module``, whose top-level package is a pip tool of the list; at a test module's top level too.

    Only the package itself missing counts as a missing tool: a broken install (one of its own dependencies
    missing) still raises, so that it is not mistaken for an uninstalled tool.
    """
    tool = _known(module.partition(".")[0])
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.partition(".")[0] != tool.name:
            raise
        tool_missing(tool, module_level=True)


def path_without(hidden: Iterable[str], dest: Path, path: str | None = None) -> str:
    """A PATH (one directory, ``dest``) holding links to every command on ``path`` but those matching ``hidden``
    (glob patterns): a way to show what a test or a script does without a tool, leaving the machine as it is."""
    patterns = list(hidden)
    dest.mkdir(parents=True, exist_ok=True)
    for directory in (path if path is not None else os.environ["PATH"]).split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = dest / entry.name
            if any(fnmatch.fnmatch(entry.name, p) for p in patterns) or link.exists() or link.is_symlink():
                continue  # hidden, or an earlier PATH directory already provides it
            link.symlink_to(entry)
    return str(dest)
