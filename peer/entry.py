"""The shared top of every warmswarm CLI (``python -m peer``, ``python -m coordinator``): logging set-up and the
promise that a failure a user can cause ends in one ``error: ...`` line and a non-zero exit, never a traceback."""

from __future__ import annotations

import argparse
import sys

from peer.errors import UserError
from peer.fork_threads import one_torch_thread_in_forks
from peer.lifetime import bind_children_to_this_process
from peer.logs import LogSettings, configure_logging
from peer.memory import limit_malloc_arenas
from peer.shm_leftovers import remove_dead_processes_files


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parses ``argv``, sets up logging (``peer.logs``: ``-v`` for debug lines and hivemind's tracebacks) and runs
    the chosen subcommand's ``func``."""
    args = parser.parse_args(argv)
    configure_logging(LogSettings(verbose=bool(getattr(args, "verbose", False))))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    bind_children_to_this_process()  # before anything forks: no child may outlive this process (peer.lifetime)
    one_torch_thread_in_forks()  # the parent's OpenMP pool is gone in a fork (peer.fork_threads)
    limit_malloc_arenas()  # before any DHT or averager process is forked: they inherit it (peer.memory)
    remove_dead_processes_files()  # what killed processes left in /dev/shm is memory the next OOM lacks
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
