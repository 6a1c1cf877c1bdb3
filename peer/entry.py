"""The shared top of every warmswarm CLI (``python -m peer``, ``python -m coordinator``): logging set-up and the
promise that a failure a user can cause ends in one ``error: ...`` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys

from peer.errors import UserError
from peer.lifetime import bind_children_to_this_process
from peer.memory import limit_malloc_arenas


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parses ``argv``, sets up logging (``-v`` for debug) and runs the chosen subcommand's ``func``."""
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    bind_children_to_this_process()  # before anything forks: no child may outlive this process (peer.lifetime)
    limit_malloc_arenas()  # before any DHT or averager process is forked: they inherit it (peer.memory)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
