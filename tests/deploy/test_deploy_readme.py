"""Every ``coordinator``/``peer`` command line that deploy/README.md shows is one the real CLIs accept."""

from __future__ import annotations

import re
import shlex

from deploy_checks import DEPLOY, parse_command

_COMMAND = re.compile(r"(?<![\w-])(coordinator|peer)\s+(start|join|status|download|grow|train)\b([^`#\n]*)")


def readme_commands() -> list[list[str]]:
    """The command lines, continuation lines joined; prose shorthand ending in ``...`` is left out."""
    text = (DEPLOY / "README.md").read_text().replace("\\\n", " ")
    commands = [[m.group(1), m.group(2), *shlex.split(m.group(3))] for m in _COMMAND.finditer(text)]
    return [c for c in commands if "..." not in c]


def test_readme_command_lines_parse_with_the_real_clis(parsers):
    commands = readme_commands()
    assert {c[1] for c in commands} >= {"start", "join"}, commands
    for argv in commands:
        parse_command(parsers, argv)
