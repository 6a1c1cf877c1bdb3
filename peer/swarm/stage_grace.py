"""The old stage's final state, served for a while after a growth switch (``growth.switch_grace`` seconds).

Why: the coordinator checkpoints the last state before each switch (``coordinator.checkpoint_saver``). That state
exists only in the peers, and a peer replaces it by the grown one at the switch; so each peer keeps the old stage's
state averager running, serving the state it held at the switch under the old stage's keys, until the grace ends,
then withdraws its declaration and shuts the averager down. Nothing trains with it: its tensors are the ones the
grown model was computed from, no longer referenced by the model.
"""

from __future__ import annotations

import logging
import threading

from peer.swarm.swarm_optimizer import withdraw_state_sharing

logger = logging.getLogger(__name__)


class GraceServer:
    """One retired state averager, shut down after ``grace`` seconds or at ``close()``, whichever comes first.
    ``close`` is idempotent and safe to call from any thread; the session calls it when the peer leaves, so no
    averager process outlives the peer."""

    def __init__(self, averager, grace: float, stage: int):
        self._averager = averager
        self._lock = threading.Lock()
        self.stage = stage
        self._timer = threading.Timer(grace, self.close)
        self._timer.daemon = True
        self._timer.start()
        logger.info("serving stage %d's final state for %.0f s more", stage, grace)

    def close(self) -> None:
        with self._lock:
            averager, self._averager = self._averager, None
        self._timer.cancel()
        if averager is None:
            return
        withdraw_state_sharing(averager)
        try:
            averager.shutdown()
        except Exception as e:  # leaving must never fail on this; the averager's process dies with ours
            logger.info("could not shut down stage %d's state averager: %s", self.stage, e)
        logger.info("stopped serving stage %d's final state", self.stage)
