"""Background prefetching of batches, so tokenization overlaps the training step.

Why a thread is enough: the expensive part (the Rust tokenizer) releases the GIL, as does a CUDA step, so one producer
thread gives real overlap without worker processes; and a single producer keeps the batch order, hence determinism.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class Prefetcher(Iterator[T]):
    """Iterates ``source`` in a daemon thread, at most ``depth`` items ahead. Same items, same order as ``source``;
    an exception in ``source`` is re-raised at the consumer's ``next``. ``close()`` (or leaving a ``with`` block)
    stops the thread."""

    def __init__(self, source: Iterator[T], depth: int = 8):
        if depth < 1:
            raise ValueError("prefetch depth must be at least 1")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(source,), name="batch-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, source: Iterator[T]) -> None:
        try:
            for item in source:
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as e:  # handed to the consumer, who decides
            self._put(_Raised(e))

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raised):
            self._finished = True
            raise item.error
        return item

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> Prefetcher[T]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def prefetch(source: Iterator[T], depth: int = 8) -> Prefetcher[T]:
    return Prefetcher(source, depth)
