"""SIGINT / SIGTERM handling: the first signal asks the loop to stop after the current step so the peer can leave
the DHT and stop its p2pd child cleanly (exit 0); a second one stops waiting and raises KeyboardInterrupt."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

logger = logging.getLogger(__name__)


class StopSignal:
    """Set by SIGINT/SIGTERM (or by code, e.g. tests and max-step limits); polled by the training loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._previous: dict[int, object] = {}
        self._pid = os.getpid()

    def install(self) -> StopSignal:
        self._pid = os.getpid()
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def reassert(self) -> None:
        """Puts our handlers back if something replaced them. hivemind's averagers set SIGINT to *ignored* in the
        process that starts them (``DecentralizedAverager.run_in_background``) and never restore it, which would make
        Ctrl-C do nothing; the loop calls this every step. Only the main thread may set handlers."""
        if not self._previous or threading.current_thread() is not threading.main_thread():
            return
        for signum in self._previous:
            if signal.getsignal(signum) != self._handle:
                signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            # A child forked after install (hivemind's DHT and averager processes) inherits this handler. Its parent
            # manages its life: Ctrl-C (sent to the whole terminal group) is the parent's to handle, and SIGTERM
            # (the parent's "terminate the hard way") must terminate, not ask a loop that is not there to stop.
            if signum != signal.SIGINT:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            return
        if self._event.is_set():
            raise KeyboardInterrupt
        logger.info("%s received: finishing the current step, then leaving the swarm", signal.Signals(signum).name)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)


@contextmanager
def signal_handlers_kept(signums: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Puts back, after the block, the handlers that were in place before it. Wrap the start of a hivemind averager
    in it: ``DecentralizedAverager`` sets SIGINT to ignored in the process that starts it and never restores it,
    which would leave a coordinator or peer deaf to Ctrl-C for the rest of its life. Main thread only (elsewhere
    Python cannot set handlers, and hivemind's change did not happen there either)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {signum: signal.getsignal(signum) for signum in signums}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None and signal.getsignal(signum) != handler:
                signal.signal(signum, handler)
