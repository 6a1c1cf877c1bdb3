"""Command-line options more than one ``peer`` command takes, defined once so that they read the same everywhere."""

from __future__ import annotations

import argparse


def add_overrides(parser: argparse.ArgumentParser, example: str, more: str = "") -> None:
    """``--set SECTION.KEY=VALUE`` (repeatable), collected into ``args.overrides``: how ``peer train`` and
    ``peer join`` change one value of the run config (``peer.config.load_config``)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable){more}",
    )
