"""The fault scenarios of ``bench/faults.py``: each starts real processes, injects one fault and returns table rows
(what was measured, the figure, the target, pass/fail). The fast tests call the same functions with smaller
settings, so the benchmark and the tests cannot drift apart."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Row:
    """One line of the faults table. ``passed`` None: measured, but no target applies (context only)."""

    scenario: str
    measured: str
    figure: str
    target: str
    passed: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scenario:
    help: str
    run: Callable[[Path], list[Row]]


SCENARIOS: dict[str, Scenario] = {}


def run_scenario(name: str, work: Path) -> list[Row]:
    """Runs one scenario; a scenario that crashes is one failed row with the reason, not a lost table."""
    work.mkdir(parents=True, exist_ok=True)
    try:
        return SCENARIOS[name].run(work)
    except KeyboardInterrupt:
        raise
    except Exception as e:
        logger.exception("scenario %s crashed", name)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return [Row(name, "scenario ran to the end", f"crashed: {first[:120]}", "no crash", False)]
