"""``--batch_size auto``: the micro-batch this machine trains best with, found by probe steps at doubling sizes.

On a GPU the largest size whose whole step (forward and backward) fits the device's memory wins: a bigger
micro-batch fills the card better and never costs samples/s there (the approach of accelerate's
``find_executable_batch_size``, upward from a small size rather than downward from a guess). On a CPU memory is
rarely the limit and throughput stops improving early, so the size with the most samples per second wins.

The probes use one real batch of the run's data, repeated to each size, so the shapes and the objective are exactly
the training step's; they change neither the parameters (no optimizer step; gradients are cleared) nor the
objective's random stream (its state is put back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from peer.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitSpec:
    """Where the doubling starts and stops, and on CPU how much better a doubling must be to count."""

    start: int = 1
    limit: int = 1024
    cpu_gain: float = 1.05  # a doubling must bring 5% more samples/s on CPU, else the smaller size wins
    repeats: int = 2  # timed probes per size on CPU (the first, untimed one warms up)


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's (and MPS's) out-of-memory error, or the CPU allocator's refusal."""
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def fit_batch_size(probe: Callable[[int], float], by_throughput: bool, spec: FitSpec | None = None) -> int:
    """The micro-batch to train with. ``probe(n)`` runs one step at micro-batch ``n`` and returns its seconds,
    raising an out-of-memory error when ``n`` does not fit. ``by_throughput`` (CPU): the size with the most
    samples/s among those that fit; otherwise the largest that fits. UserError when not even ``spec.start`` fits."""
    spec = spec or FitSpec()
    best, best_rate = 0, 0.0
    n = spec.start
    while n <= spec.limit:
        try:
            seconds = probe(n)
            if by_throughput:
                seconds = min(probe(n) for _ in range(spec.repeats))
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            logger.info("micro-batch %d does not fit this device's memory", n)
            break
        rate = n / max(seconds, 1e-9)
        logger.info("micro-batch %d fits: %.1f samples/s", n, rate)
        if by_throughput and best and rate < best_rate * spec.cpu_gain:
            break
        best, best_rate = n, rate
        n *= 2
    if best == 0:
        raise UserError(f"not even a micro-batch of {spec.start} fits this device's memory: use a smaller model")
    return best


def step_probe(
    run_step: Callable[[dict], None], batch: dict, synchronize: Callable[[], None]
) -> Callable[[int], float]:
    """A ``probe`` for ``fit_batch_size``: ``run_step`` (forward and backward, then clearing the gradients) on
    ``batch`` repeated to ``n`` rows, timed until the device is done (``synchronize``)."""

    def probe(n: int) -> float:
        rows = next(iter(batch.values())).shape[0]
        times = -(-n // rows)
        grown = {k: v.repeat(times, *([1] * (v.dim() - 1)))[:n] for k, v in batch.items()}
        t0 = time.perf_counter()
        try:
            run_step(grown)
            synchronize()
        finally:
            del grown
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        return time.perf_counter() - t0

    return probe
