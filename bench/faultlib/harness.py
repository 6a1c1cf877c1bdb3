"""What every fault scenario shares: the table row it returns, how long it waits for a process milestone, and how
it reads the peers' served states (a client DHT of its own, every peer's state at one global step)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from bench.faultlib.peer_state import ServedState, download_states
from bench.faultlib.procs import PEER_ID, Coordinator
from peer.children import Child


@dataclass
class Row:
    """One line of the faults table. ``passed`` None: measured, but no target applies (context only)."""

    scenario: str
    measured: str
    figure: str
    target: str
    passed: bool | None

    def to_dict(self) -> dict:
        return asdict(self)


# Seconds to wait for a process milestone (a peer training, a checkpoint). Minutes, not seconds: on the shared dev
# machine (load average 20-120 while these ran) a peer took up to 5 min just to import torch and hivemind.
PATIENCE = 900.0


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else float("nan")


def peer_id_of(child: Child, timeout: float = 120.0) -> str:
    return child.wait_for_line(PEER_ID, timeout).group(1)


@contextmanager
def observer_dht(coordinator: Coordinator):
    """A client-mode DHT in this process, joined through the coordinator, for downloading peers' states."""
    import hivemind

    initial = coordinator.get("/api/v1/run")["initial_peers"]
    dht = hivemind.DHT(initial_peers=initial, client_mode=True, startup_timeout=120, start=True)
    try:
        yield dht
    finally:
        dht.shutdown()


def states_at_steps(
    coordinator: Coordinator, run_id: str, peer_ids: list[str], samples: int, attempts: int = 15
) -> list[list[ServedState]]:
    """``samples`` times, every peer's served state at one and the same global step, a later step each time:
    downloads concurrently and retries while the peers straddle a step boundary (they train on between
    downloads); ``attempts`` tries per sample."""
    taken: list[list[ServedState]] = []
    states: list[ServedState] = []
    with observer_dht(coordinator) as dht:
        while len(taken) < samples:
            for _ in range(attempts):
                states = download_states(dht, run_id, peer_ids, timeout=30)
                if (
                    len(states) == len(peer_ids)
                    and len({s.step for s in states}) == 1
                    # a stream cut short (the peer's step under way, a slow read) still has its metadata: a state
                    # with fewer tensors than the others is read again, not compared (2026-12-06: one peer's state
                    # ended inside the optimizer statistics, "largest inf", every parameter equal)
                    and len({len(s.tensors) for s in states}) == 1
                    and (not taken or taken[-1][0].step < states[0].step)
                ):
                    taken.append(states)
                    break
                time.sleep(0.5)
            else:
                steps = {s.peer_id[-6:]: f"step {s.step}, {len(s.tensors)} tensors" for s in states}
                raise RuntimeError(
                    f"could not get all {len(peer_ids)} peers' states at one step in {attempts} tries: {steps}"
                )
    return taken
