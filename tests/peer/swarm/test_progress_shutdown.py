"""A progress tracker that shuts down leaves no asyncio task pending and its loop closed, so asyncio never logs
"Task was destroyed but it is pending!" at a peer's clean exit (issue #20). hivemind 1.1.12's own ``run`` left
``_progress_fetcher``'s shutdown checker pending in an unclosed loop in about half of the shutdowns."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading

import hivemind
import pytest

from peer.swarm.overrides.progress import ThrottledProgressTracker


@pytest.fixture
def dht():
    dht = hivemind.DHT(start=True, host_maddrs=["/ip4/127.0.0.1/tcp/0"])
    yield dht
    dht.shutdown()


class RecordingPolicy(asyncio.DefaultEventLoopPolicy):
    """asyncio's default policy that also keeps every loop a tracker's thread makes, so a test can look at it after
    the thread has ended (otherwise the loop, and its pending tasks, are freed with the thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.loops: list[asyncio.AbstractEventLoop] = []

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        if isinstance(threading.current_thread(), ThrottledProgressTracker):
            self.loops.append(loop)
        return loop


@pytest.fixture
def recorded_loops():
    previous = asyncio.get_event_loop_policy()
    policy = RecordingPolicy()
    asyncio.set_event_loop_policy(policy)
    yield policy.loops
    asyncio.set_event_loop_policy(previous)


@pytest.mark.timeout(180)
def test_shutdown_leaves_no_pending_task_and_closes_its_loop(dht, recorded_loops, caplog):
    for i in range(3):
        tracker = ThrottledProgressTracker(dht=dht, prefix=f"shutdown-{i}", target_batch_size=10, start=True)
        tracker.report_local_progress(0, 4)
        tracker.shutdown(timeout=10)
        tracker.join(timeout=10)
        assert not tracker.is_alive()
    assert len(recorded_loops) == 3  # one per tracker thread
    for loop in recorded_loops:
        assert loop.is_closed(), "a tracker's event loop was left open"
        assert [task for task in asyncio.all_tasks(loop) if not task.done()] == []
    del tracker
    recorded_loops.clear()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert "Task was destroyed" not in caplog.text
