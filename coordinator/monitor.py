"""The monitor: reads the peers' signed ``LocalMetrics`` records from the DHT, turns them into the run's progress and
each volunteer's contribution, and writes both to the store.

Trust comes from the DHT itself: the coordinator's node validates every record it stores or receives with
``SchemaValidator`` (shape and bounds, ``peer.run.records``) and ``RSASignatureValidator`` (only the holder of the key
in the subkey may write it). Each validator is wrapped in a ``RejectionCounter`` that counts, by reason, the records
of this run it refuses; the counts live in the DHT's process and the monitor collects them every pass.

Global step = the highest step among alive peers (hivemind's ``examples/albert`` monitor does the same); loss = the
mean over alive peers. A peer is alive while its record keeps changing: a record that sits unchanged in the DHT until
it expires belongs to a peer that is gone.

A run with a growth schedule keeps one history across its stages: each point carries the stage of the global step
(the dashboard marks the switches from it). A record whose stage does not match the schedule at its step is
rejected, counted as ``bad_stage`` (once per record) and used for nothing: not for the global step, not for credit.

Samples/s is not what peers say about themselves (``coordinator.rates`` says why): the swarm's is the increase of the
run's credited samples counter (``warmswarm_samples_total``) over the last ``rate_window`` seconds, a volunteer's the
same of its own credited samples, and 0 once it is not alive.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import hivemind
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.schema import SchemaValidator
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.crypto import RSAPrivateKey

from coordinator.bans import BanCourt
from coordinator.rates import DEFAULT_RATE_WINDOW, CounterWindow
from coordinator.store import PeerObservation, Store
from peer.run.record_limits import REASON_OVERSIZED, RecordSizeLimit
from peer.run.records import LocalMetrics, MetricsSchema, bans_key, config_key, metrics_key, reports_key
from peer.swarm.bans import ban_validators
from peer.swarm.stage_keys import Stages, stage_at, stage_matches

logger = logging.getLogger(__name__)

REASON_MALFORMED = "malformed"  # fails the LocalMetrics schema (types, bounds) or is not keyed by a public key
REASON_BAD_SIGNATURE = "bad_signature"  # written under a public key by someone who does not hold it (forged)
REASON_BAD_STAGE = "bad_stage"  # its growth stage does not match the schedule at its step (``stage_matches``)


class RejectionCounter(RecordValidatorBase):
    """A validator that delegates to ``inner`` and counts the records of ``watched_keys`` it rejects, under
    ``reason``. Priority and merging are the inner validator's, so hivemind orders and merges it the same way."""

    def __init__(self, inner: RecordValidatorBase, reason: str, watched_keys: Iterable[bytes]):
        self.inner = inner
        self.reason = reason
        self.watched_keys = frozenset(watched_keys)
        self.rejected = 0

    def validate(self, record: DHTRecord) -> bool:
        ok = self.inner.validate(record)
        if not ok and record.key in self.watched_keys:
            self.rejected += 1
            logger.debug("rejected a %s record (%s)", self.reason, record.subkey[:48])
        return ok

    def sign_value(self, record: DHTRecord) -> bytes:
        return self.inner.sign_value(record)

    def strip_value(self, record: DHTRecord) -> bytes:
        return self.inner.strip_value(record)

    @property
    def priority(self) -> int:
        return self.inner.priority

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return self.inner.merge_with(other)


def counting_validators(
    run_id: str, private_key: RSAPrivateKey
) -> tuple[RSASignatureValidator, list[RejectionCounter]]:
    """The coordinator's record validators for ``run_id``: the signature validator (signing with the coordinator's
    persistent key) and every validator wrapped in a ``RejectionCounter`` that counts rejections of this run's keys.
    (A peer's own validators are ``peer.swarm.metrics.make_validators``.)"""
    signature = RSASignatureValidator(private_key)
    keys = (metrics_key(run_id), config_key(run_id), reports_key(run_id), bans_key(run_id))
    watched = [DHTID.generate(source=key).to_bytes() for key in keys]
    schema = SchemaValidator(MetricsSchema, allow_extra_keys=True, prefix=run_id)
    return signature, [
        RejectionCounter(RecordSizeLimit(), REASON_OVERSIZED, watched),
        RejectionCounter(schema, REASON_MALFORMED, watched),
        *(RejectionCounter(v, REASON_MALFORMED, watched) for v in ban_validators(run_id)),
        RejectionCounter(signature, REASON_BAD_SIGNATURE, watched),
    ]


async def _rejection_totals(dht: hivemind.DHT, node) -> dict[str, int]:
    """Runs inside the DHT process (``DHT.run_coroutine``): the cumulative counts of its RejectionCounters."""
    validator = node.protocol.record_validator
    totals: Counter[str] = Counter()
    for v in getattr(validator, "_validators", [validator]):
        if isinstance(v, RejectionCounter):
            totals[v.reason] += v.rejected
    return dict(totals)


def volunteer_id(public_key: bytes) -> str:
    """A volunteer's row in the store and on the leaderboard: the hex sha256 of the public key that signs its records
    (the subkey they are stored under), the same across its sessions. Not its libp2p id (``peer.run.members``)."""
    return hashlib.sha256(public_key).hexdigest()


@dataclass(frozen=True)
class SwarmSnapshot:
    """One monitor pass: the aggregates written to the store and what was new in it."""

    time: float
    global_step: int
    alive_peers: int
    samples_per_second: float
    loss: float | None
    observed: list[PeerObservation] = field(default_factory=list)  # peers whose record changed in this pass
    new_rejections: dict[str, int] = field(default_factory=dict)


def aggregate(records: Iterable[LocalMetrics]) -> tuple[int, float | None]:
    """(global step, loss) over the alive peers' records; loss is the mean of the finite losses."""
    records = list(records)
    step = max((r.step for r in records), default=0)
    losses = [r.loss for r in records if math.isfinite(r.loss)]
    return step, (sum(losses) / len(losses) if losses else None)


class Monitor:
    """Polls ``<run_id>_metrics`` every ``interval`` seconds and writes the run's progress to ``store``; samples/s
    are rates over the last ``rate_window`` seconds. ``stages``: the run's growth stages (``peer.config.
    model_stages``); None: a run of one stage, whose records must all say stage 0.

    Not thread-safe itself: one thread calls ``poll`` (``run`` does so until ``stop`` is set)."""

    def __init__(
        self,
        dht: hivemind.DHT,
        store: Store,
        run_id: str,
        alive_window: float = 60.0,
        interval: float = 5.0,
        bans: BanCourt | None = None,
        forget_after: float = 3600.0,
        rate_window: float = DEFAULT_RATE_WINDOW,
        stages: Stages | None = None,
    ):
        if not rate_window > 0:
            raise ValueError(f"rate_window must be > 0 s, not {rate_window}")
        if not forget_after > alive_window:
            raise ValueError(f"forget_after ({forget_after} s) must exceed alive_window ({alive_window} s)")
        self.forget_after = forget_after  # seconds without a new record after which a peer's bookkeeping is dropped
        self.dht = dht
        self.bans = bans  # judges the peers' rejection reports once per pass (coordinator.bans)
        self.store = store
        self.run_id = run_id
        self.alive_window = alive_window
        self.interval = interval
        self._last_record: dict[str, tuple[float, int, int]] = {}  # peer -> (record time, step, samples_total)
        self._last_change: dict[str, float] = {}  # peer -> coordinator time its record last changed
        self._records: dict[str, LocalMetrics] = {}
        self._rejections_seen: dict[str, int] = {}
        self.rate_window = rate_window
        self._credited: dict[str, int] = {}  # peer -> samples the store has credited to it
        self._peer_samples: dict[str, CounterWindow] = {}  # peer -> its credited samples over the rate window
        self._rate_written: dict[str, float] = {}  # peer -> the samples/s last written to its row
        self._swarm_samples: CounterWindow | None = None  # the run's samples counter; made at the first pass
        self.stages: Stages = stages if stages is not None else [(0, None)]
        # peer -> (its last record rejected as bad_stage, when): each such record is counted once
        self._bad_stage_seen: dict[str, tuple[tuple, float]] = {}
        self._step_floor: int | None = None  # the store's global step (it never goes back): the history's stage

    def _swarm_window(self, now: float) -> CounterWindow:
        """The run's samples counter over the rate window, begun with the store's history, so that a restarted
        coordinator's first passes already have a window's worth of points."""
        samples = CounterWindow(self.rate_window)
        for point in self.store.history(since=now - self.rate_window):
            samples.add(point.time, point.samples_total)
        return samples

    @property
    def tracked_peers(self) -> int:
        """Peers whose last record the monitor keeps in memory (alive ones and those gone < ``forget_after`` ago)."""
        return len(self._last_change)

    def _forget_departed(self, now: float) -> None:
        """Drops what the monitor holds for peers whose record has not changed in ``forget_after`` seconds.

        Why: a month of volunteers coming and going is thousands of peer ids, and each kept its last record here
        for the life of the process. Their history is in the store. A forgotten peer's stale record, should the DHT
        still hold it, is a first sight of an old record and is skipped; a new one brings the peer back."""
        for pid in [pid for pid, t in self._last_change.items() if now - t > self.forget_after]:
            del self._last_change[pid]
            self._records.pop(pid, None)
            self._last_record.pop(pid, None)
            self._credited.pop(pid, None)
            self._peer_samples.pop(pid, None)
            self._rate_written.pop(pid, None)
        for pid in [pid for pid, (_, t) in self._bad_stage_seen.items() if now - t > self.forget_after]:
            del self._bad_stage_seen[pid]

    def _fetch(self) -> dict[bytes, object]:
        found = self.dht.get(metrics_key(self.run_id), latest=True)
        if found is None or not isinstance(found.value, dict):
            return {}
        return {subkey: item.value for subkey, item in found.value.items()}

    def _collect_rejections(self) -> dict[str, int]:
        totals = self.dht.run_coroutine(_rejection_totals)
        new = {reason: n - self._rejections_seen.get(reason, 0) for reason, n in totals.items()}
        self._rejections_seen = dict(totals)
        return {reason: n for reason, n in new.items() if n > 0}

    def poll(self, now: float | None = None) -> SwarmSnapshot:
        now = time.time() if now is None else now
        new_rejections = self._collect_rejections()
        locally_rejected: Counter[str] = Counter()
        observed: list[PeerObservation] = []
        for subkey, raw in self._fetch().items():
            try:
                record = LocalMetrics.parse_obj(raw)
            except Exception:  # the DHT validates records, but a node without validators can still answer a get
                locally_rejected[REASON_MALFORMED] += 1
                continue
            pid = volunteer_id(subkey)
            if not stage_matches(self.stages, record.stage, record.step):
                seen = (record.time, record.step, record.stage)
                if self._bad_stage_seen.get(pid, (None,))[0] != seen:
                    self._bad_stage_seen[pid] = (seen, now)
                    locally_rejected[REASON_BAD_STAGE] += 1
                continue
            fingerprint = (record.time, record.step, record.samples_total)
            if self._last_record.get(pid) == fingerprint:
                continue  # unchanged since the last pass
            self._last_record[pid] = fingerprint
            if pid not in self._last_change and abs(now - record.time) > self.alive_window:
                continue  # first sight of a record the peer stopped refreshing long ago (e.g. before our restart)
            self._last_change[pid] = now
            self._records[pid] = record
            loss = record.loss if math.isfinite(record.loss) else None
            obs = PeerObservation(
                peer_id=pid,
                name=record.peer_name,
                step=record.step,
                samples_total=record.samples_total,
                samples_per_second=None,  # the peer's own figure is not trusted: set_peer_rates below
                loss=loss,
                time=now,
            )
            self._credited[pid] = self.store.observe_peer(obs)
            observed.append(obs)
        for reason, n in locally_rejected.items():
            new_rejections[reason] = new_rejections.get(reason, 0) + n
        if new_rejections:
            self.store.add_rejected(new_rejections)
            logger.warning("rejected records: %s", ", ".join(f"{r}={n}" for r, n in sorted(new_rejections.items())))
        banned = {p.peer_id for p in self.store.peers(now=now) if p.banned}
        alive = {
            pid: rec
            for pid, rec in self._records.items()
            if now - self._last_change[pid] <= self.alive_window and pid not in banned
        }
        step, loss = aggregate(alive.values())
        sps = self._rates(now, alive)
        if self.bans is not None:
            try:
                self.bans.judge(alive, now)
            except Exception:  # bans wait for the next pass; progress must still be recorded
                logger.exception("could not judge the ban reports")
        if self._step_floor is None:
            self._step_floor = self.store.progress(now=now).global_step
        self._step_floor = max(self._step_floor, step)
        stage = stage_at(self.stages, self._step_floor)
        self.store.record_progress(
            global_step=step, alive_peers=len(alive), samples_per_second=sps, loss=loss, now=now, stage=stage
        )
        self._forget_departed(now)
        return SwarmSnapshot(now, step, len(alive), sps, loss, observed, new_rejections)

    def _rates(self, now: float, alive: Iterable[str]) -> float:
        """Adds this pass's points to the samples windows, writes each tracked volunteer's rate (0 unless alive) to
        the store and returns the swarm's: the rate of the run's credited samples counter."""
        alive = set(alive)
        changed = {}
        for pid, credited in self._credited.items():
            window = self._peer_samples.setdefault(pid, CounterWindow(self.rate_window))
            window.add(now, credited)
            rate = (window.rate() or 0.0) if pid in alive else 0.0
            if self._rate_written.get(pid) != rate:  # a departed peer's 0 is written once, not every pass
                changed[pid] = self._rate_written[pid] = rate
        if changed:
            self.store.set_peer_rates(changed)
        if self._swarm_samples is None:
            self._swarm_samples = self._swarm_window(now)
        self._swarm_samples.add(now, self.store.samples_total())
        return self._swarm_samples.rate() or 0.0

    def run(self, stop: threading.Event, on_poll: Callable[[SwarmSnapshot], None] | None = None) -> None:
        """Polls until ``stop`` is set; a failed pass is logged and retried at the next interval."""
        while not stop.is_set():
            try:
                snapshot = self.poll()
                if on_poll is not None:
                    on_poll(snapshot)
            except Exception:
                logger.exception("monitor pass failed; retrying in %.0f s", self.interval)
            stop.wait(self.interval)
