"""``TolerantDHT``: a hivemind DHT whose process survives a request it cannot read.

Replaces (hivemind 1.1.12, ``hivemind/dht/dht.py``) how ``DHT.run``'s loop reads requests: ``self._inner_pipe``,
read with ``recv()``, is wrapped so that a request that fails to unpickle becomes a no-op instead of an exception.

Why: every request another process sends to the DHT process (``get``, ``store``, ``run_coroutine``, from the peer's
main process and from each hivemind averager process) carries an ``MPFuture``, and an MPFuture pickles the
*sender's* result pipe. multiprocessing hands a pipe to another process through the sender's ``resource_sharer``
thread: the reader connects to it while unpickling. When the sender exits between its write and the DHT's read,
that connection fails, and ``DHT.run`` catches only OSError, ConnectionError and RuntimeError around its read: an
EOFError ends the DHT process. The peer's next ``dht.run_coroutine`` (no timeout) then waits forever. Seen
2026-12-07 in the growth-switch test (``tests/peer/swarm/test_swarm_stage_switch.py``, about 1 run in 8 on a
loaded machine): the old stage's averager processes exit right after their last DHT request, the DHT process died
with ``EOFError`` in ``rebuild_connection`` -> ``resource_sharer`` -> ``answer_challenge``, and the next stage's
``ProgressTracker`` hung in ``dht.add_validators``.

A request that cannot be read is one whose sender is gone, so nobody waits for its answer: dropping it (with a
warning) is what the sender would have got had it exited a moment earlier. The message itself was read whole before
unpickling failed, so the pipe stays in step.
"""

from __future__ import annotations

import logging
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

import hivemind

logger = logging.getLogger(__name__)

DROPPED = "_drop_unreadable_request"
"""The DHT method a request that could not be read is turned into (a no-op, below)."""


class TolerantReceiver:
    """The DHT process's end of its request pipe: what ``DHT.run`` uses of a ``Connection`` (``fileno``, ``poll``,
    ``recv``, ``close``), with ``recv`` turning a request that fails to unpickle into ``(DROPPED, [], {})``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def fileno(self) -> int:
        return self._conn.fileno()

    def poll(self, timeout: float = 0.0) -> bool:
        return self._conn.poll(timeout)

    def recv(self) -> tuple:
        data = self._conn.recv_bytes()  # the whole message: a failure below leaves the pipe at the next one
        try:
            return ForkingPickler.loads(data)
        except Exception as e:
            logger.warning(
                "the DHT dropped a request it could not read (%d bytes; its sender exited before the DHT read it): "
                "%s: %s",
                len(data),
                type(e).__name__,
                e,
            )
            return DROPPED, [], {}

    def close(self) -> None:
        self._conn.close()


class TolerantDHT(hivemind.DHT):
    """``hivemind.DHT`` whose process drops a request it cannot read instead of ending (see the module docstring).
    Same arguments as ``hivemind.DHT``."""

    def __init__(self, *args, start: bool, await_ready: bool = True, **kwargs) -> None:
        super().__init__(*args, start=False, **kwargs)
        self._inner_pipe = TolerantReceiver(self._inner_pipe)
        if start:
            self.run_in_background(await_ready=await_ready)

    async def _drop_unreadable_request(self) -> None:
        """Runs in the DHT process in place of a request that could not be read: there is nobody to answer."""
