"""What a peer's reducer saw in each all-reduce round, and how it travels to the training process.

``RoundOutcomes`` are made inside the averagers' forked processes (``peer.swarm.overrides``) and carried by
``OutcomeChannel`` to the training process, where ``peer.swarm.bans`` turns them into local bans and signed
reports; ``EvidenceGrace`` holds back the evidence of the first state rounds."""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
from dataclasses import dataclass

from peer.swarm.robust import INCRIMINATING, Outcome

logger = logging.getLogger(__name__)

GRADIENTS = "gradients"
STATE = "state"


@dataclass(frozen=True)
class RoundOutcomes:
    """One all-reduce round as this peer's reducer saw it: each sender's worst outcome, by libp2p peer id."""

    kind: str  # GRADIENTS or STATE: streaks are counted per kind (an attacker may corrupt only one of them)
    outcomes: dict[str, str]


class OutcomeChannel:
    """Carries ``RoundOutcomes`` from the averagers' forked processes to the training process.

    Created before the averagers fork; ``put`` never blocks the averager's event loop (a full or broken queue
    drops the report with a log line: losing one round's evidence is better than stalling an all-reduce)."""

    def __init__(self) -> None:
        self._queue: mp.Queue = mp.Queue()
        self._queue.cancel_join_thread()  # an averager process must be able to exit with reports unsent

    def put(self, report: RoundOutcomes) -> None:
        try:
            self._queue.put_nowait(report)
        except (queue.Full, ValueError, OSError) as e:
            logger.warning("dropping a round's outcomes: %s", e)

    def drain(self) -> list[RoundOutcomes]:
        reports = []
        while True:
            try:
                reports.append(self._queue.get_nowait())
            except (queue.Empty, EOFError, OSError):
                return reports

    def close(self) -> None:
        self._queue.close()


@dataclass
class EvidenceGrace:
    """Turns incriminating outcomes into ``EXCLUDED`` (no evidence either way) for the first ``rounds`` rounds it
    sees; after that passes them on. Used for state rounds (``ClipSettings.state_grace_rounds``): the reducer still
    clips, only the ban evidence waits until the peers' parameters have had rounds to agree."""

    rounds: int
    seen: int = 0

    def filter(self, outcomes: dict[str, str]) -> dict[str, str]:
        self.seen += 1
        if self.seen > self.rounds:
            return outcomes
        return {
            peer: Outcome.EXCLUDED.value if outcome in INCRIMINATING else outcome for peer, outcome in outcomes.items()
        }
