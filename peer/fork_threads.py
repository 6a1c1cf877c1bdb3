"""Forked children run torch on one thread: the parent's OpenMP thread pool does not survive a fork.

Why: hivemind forks its DHT process and averagers from a process that has usually run multi-threaded torch already
(building or loading the model). The pool's worker threads are not copied into the child, but the OpenMP runtime
(libgomp in torch's wheels) still believes they exist, so the child's first parallel op (any elementwise op or copy
over more than torch's grain size, ~32k elements) waits for them forever. Measured with torch 2.13 CPU: a copy of 4M
floats in a fork hung after the parent had run one such op, and finished when the child first set one thread. The
children affected are the averagers (all-reduce parts, state downloads: the coordinator's checkpoint pulls) and the
DHT process; their work is memory- and network-bound, so one thread costs them little.
"""

from __future__ import annotations

import os
import sys

_installed: list[bool] = []
"""``os.register_at_fork`` cannot be undone: one hook per process, however often the CLI entry runs in it."""


def one_torch_thread_in_forks() -> None:
    """Makes every process forked from now on set torch (and OpenMP) to one thread before it runs any op. Call once
    at the top of a main process; later calls do nothing."""
    if _installed:
        return
    os.register_at_fork(after_in_child=_one_thread)
    _installed.append(True)


def _one_thread() -> None:
    torch = sys.modules.get("torch")  # a child of a process that never imported torch has no pool to lose
    if torch is not None:
        torch.set_num_threads(1)
