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


_FENCE = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)
_INLINE = re.compile(r"`(python -m (?:coordinator|peer) [^`]+)`")
_LINE = re.compile(r"python -m (coordinator|peer)\s+(\S.*)")


def root_readme_commands() -> list[list[str]]:
    """Every ``python -m coordinator|peer`` command of the top-level README.md: the lines of its code blocks
    (continuations joined, comments dropped) and its inline code spans (which may wrap across lines). Left out:
    ``--help``, prose that only names a command (no argument after it) or several (``grow | train | join``), and
    shorthand ending in ``...``."""
    text = (DEPLOY.parent / "README.md").read_text()
    found: list[str] = []
    for block in _FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(line.split(" #", 1)[0])
    found += [" ".join(span.split()) for span in _INLINE.findall(text)]
    commands = []
    for line in found:
        match = _LINE.search(line)
        if match is None:
            continue
        argv = [match.group(1), *shlex.split(match.group(2))]
        if len(argv) < 3 or "--help" in argv or "|" in argv or any("..." in a for a in argv):
            continue
        commands.append(argv)
    return commands


def test_root_readme_command_lines_parse_with_the_real_clis(parsers):
    commands = root_readme_commands()
    joins = [c for c in commands if c[:2] == ["peer", "join"]]
    assert any("--batch_size" in c and "--precision" in c for c in joins), "the README shows a peer's own step flags"
    assert {c[1] for c in commands} >= {"start", "join", "download", "export", "evaluate", "train"}, commands
    for argv in commands:
        parse_command(parsers, argv)
