"""The fault scenarios of ``bench/faults.py``, in table order: each starts real processes, injects one fault and
returns table rows (what was measured, the figure, the target, pass/fail). The fast tests call the same functions with
smaller settings, so the benchmark and the tests cannot drift apart. One module per scenario family: ``peer_kill``,
``coordinator_kill``, ``all_leave``, ``hostile`` (records, tokens, attacker peers); what they share: ``harness``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.faultlib.all_leave import AllLeaveSettings, all_leave
from bench.faultlib.coordinator_kill import CoordinatorKillSettings, audit_checkpoints, coordinator_kill
from bench.faultlib.harness import Row
from bench.faultlib.hostile import AttackSettings, RecordSettings, TokenSettings, attacks, bad_records, bad_tokens
from bench.faultlib.peer_kill import PeerKillSettings, peer_kill

__all__ = [
    "SCENARIOS", "Row", "Scenario", "run_scenario",
    "AllLeaveSettings", "AttackSettings", "CoordinatorKillSettings", "PeerKillSettings", "RecordSettings",
    "TokenSettings", "all_leave", "attacks", "audit_checkpoints", "bad_records", "bad_tokens", "coordinator_kill",
    "peer_kill",
]  # fmt: skip

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scenario:
    help: str
    run: Callable[[Path], list[Row]]


SCENARIOS: dict[str, Scenario] = {
    "peer_kill": Scenario("SIGKILL a peer inside an averaging round, 3 times, a new peer joining each time", peer_kill),
    "coordinator_kill": Scenario(
        "SIGKILL the coordinator inside a checkpoint write, 3 times, restarting it each time", coordinator_kill
    ),
    "all_leave": Scenario("every peer leaves; a newcomer resumes from the coordinator's checkpoint", all_leave),
    "bad_records": Scenario("forged, malformed and oversized metrics records from a hostile DHT node", bad_records),
    "bad_tokens": Scenario("tampered and expired access tokens against a private run's DHT", bad_tokens),
    # the long runs last in the table
    "attacks": Scenario("sign flip x1000, random x1000 and NaN attackers, defences on and off", attacks),
}


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
