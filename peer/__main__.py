"""``python -m peer <command>``: the volunteer's entry point; the commands are the public modules of ``peer.cli``
(``grow``, ``train``, ``join``, ...), each registering its own subparser (a ``_private`` one is shared code)."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import peer.cli
from peer.entry import run_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m peer", description="warmswarm volunteer peer")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(peer.cli.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"peer.cli.{info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
