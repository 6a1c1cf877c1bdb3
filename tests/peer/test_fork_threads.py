"""``peer.fork_threads``: a process forked after its parent ran multi-threaded torch can still run torch ops. Runs in
a fresh interpreter: the at-fork hook cannot be removed from a process, and the parent's thread pool must be warm."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp
    import torch
    from peer.fork_threads import one_torch_thread_in_forks

    def child(queue):
        x = torch.ones(4_000_000)
        y = torch.empty_like(x)
        y.copy_(x)  # a parallel op over more than torch's grain size
        queue.put((float(y.sum()), torch.get_num_threads()))

    if __name__ == "__main__":
        one_torch_thread_in_forks()
        torch.set_num_threads(2)
        a = torch.ones(4_000_000)
        (a * 2).copy_(a)  # the parent's OpenMP pool now exists
        ctx = mp.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=child, args=(queue,))
        proc.start()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            print("HUNG")
        else:
            print(queue.get(timeout=5), torch.get_num_threads())
    """
)


@pytest.mark.timeout(180)
def test_a_fork_of_a_warm_multithreaded_parent_runs_large_torch_ops_on_one_thread():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr
    # the child finished its copy on one thread; the parent keeps its own threads
    assert out.stdout.split() == ["(4000000.0,", "1)", "2"], out.stdout
