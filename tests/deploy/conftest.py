"""Fixtures for the deployment-recipe tests: the real CLI parsers the recipes' command lines must satisfy."""

from __future__ import annotations

import argparse

import pytest
from deploy_checks import cli_parser


@pytest.fixture(scope="session")
def parsers() -> dict[str, argparse.ArgumentParser]:
    """``{"coordinator": ..., "peer": ...}``: the parsers of ``python -m coordinator`` and ``python -m peer``."""
    return {name: cli_parser(name) for name in ("coordinator", "peer")}
