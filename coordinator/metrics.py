"""Prometheus metrics of the coordinator, read from the store at scrape time.

Why a collector over the store rather than gauges set by the monitor: the store is the one source of truth (it
survives restarts), so a scrape always shows what the JSON API and the dashboard show, and nothing has to remember
to update a gauge. Naming follows Prometheus practice: prefix ``warmswarm_``, base units, counters end ``_total``,
and no peer ids in labels (per-peer data is in the JSON API). Counters read from the store (samples, rejected
records, export builds and failures) are monotonic across coordinator restarts; the process-local ones (download
bytes, checkpoint saves seen) start at zero with the process, which Prometheus's ``rate()`` handles as a counter
reset.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator.evaluation.spec import CHECKPOINT
from coordinator.rates import DEFAULT_RATE_WINDOW
from coordinator.store import Store
from peer.errors import UserError

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Checkpoint saves range from a second (demo model) to minutes (a large model on a slow disk).
SAVE_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, math.inf)
PROTOCOLS = ("http", "grpc")


class _StoreCollector(Collector):
    """Turns the store's current figures into metric families on each scrape."""

    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterable[Metric]:
        try:
            p = self.store.progress()
        except UserError:  # no run opened yet (a scrape during start-up): export the process metrics only
            return
        yield GaugeMetricFamily("warmswarm_alive_peers", "Peers whose metrics record is fresh", value=p.alive_peers)
        yield GaugeMetricFamily("warmswarm_global_step", "Global optimizer step of the swarm", value=p.global_step)
        yield CounterMetricFamily("warmswarm_samples", "Samples the swarm has trained on", value=p.samples_total)
        yield GaugeMetricFamily(
            "warmswarm_samples_per_second",
            f"Swarm throughput: the increase of warmswarm_samples_total over the monitor's rate window (default "
            f"{DEFAULT_RATE_WINDOW:.0f} s), as rate() computes it from that counter; 0 once no pass updated it "
            "within the alive window",
            value=p.samples_per_second,
        )
        yield GaugeMetricFamily(
            "warmswarm_loss", "Mean training loss over alive peers (NaN before any)", value=_or_nan(p.loss)
        )
        yield GaugeMetricFamily(
            "warmswarm_last_checkpoint_step", "Step of the newest saved checkpoint (-1: none)",
            value=-1 if p.last_checkpoint_step is None else p.last_checkpoint_step,
        )  # fmt: skip
        rejected = CounterMetricFamily(
            "warmswarm_rejected_records", "Metrics records the coordinator refused", labels=["reason"]
        )
        for reason, count in sorted(self.store.rejected_counts().items()):
            rejected.add_metric([reason], count)
        yield rejected
        yield GaugeMetricFamily(
            "warmswarm_banned_peers", "Peers the coordinator banned for this run", value=len(self.store.bans())
        )
        contributions = CounterMetricFamily(
            "warmswarm_rejected_contributions",
            "Averaging contributions the peers' reducers rejected (clipped or non-finite), summed over reporters",
            labels=["reason"],
        )
        for reason, count in sorted(self.store.rejected_contribution_counts().items()):
            contributions.add_metric([reason], count)
        yield contributions
        yield from self._evaluation()
        yield from self._exports()

    def _evaluation(self) -> Iterable[Metric]:
        """The newest evaluated checkpoint's scores (the background evaluation, ``coordinator.evaluator``): one
        series per task and metric, held-out pretraining metrics as task "heldout"; NaN where a score was not a
        number."""
        latest = [s for s in self.store.latest_evaluation() if s.role == CHECKPOINT]
        step = GaugeMetricFamily(
            "warmswarm_eval_step", "Global step of the newest evaluated checkpoint (-1: none yet)",
            value=latest[0].step if latest else -1,
        )  # fmt: skip
        mean = GaugeMetricFamily(
            "warmswarm_eval_score", "Score of the newest evaluated checkpoint: mean over fine-tuning seeds",
            labels=["task", "metric"],
        )  # fmt: skip
        sd = GaugeMetricFamily(
            "warmswarm_eval_score_sd", "Sample standard deviation of warmswarm_eval_score over its seeds",
            labels=["task", "metric"],
        )  # fmt: skip
        for score in latest:
            mean.add_metric([score.task, score.metric], _or_nan(score.mean))
            sd.add_metric([score.task, score.metric], _or_nan(score.sd))
        failures = sum(a.attempts for a in self.store.evaluation_attempts().values())
        yield step
        yield mean
        yield sd
        yield CounterMetricFamily(
            "warmswarm_eval_failures", "Background evaluations that crashed, were killed or timed out", value=failures
        )


    def _exports(self) -> Iterable[Metric]:
        """The background exporter's builds and failures by form, for the whole run (``Store.export_builds``).
        Counters, not gauges of what is on disk now: pruning takes a checkpoint's exports and failure records with
        it, and an alert on a form that keeps failing (deploy/prometheus/alerts.yml) needs a count that only grows.
        A form shows up once it was built or failed at least once."""
        counts = self.store.export_builds()
        built = CounterMetricFamily(
            "warmswarm_exports_built", "Exports the background exporter built and published, by form", labels=["form"]
        )
        failed = CounterMetricFamily(
            "warmswarm_export_failures",
            "Export builds that failed (error, crash, kill or timeout), by form; a stopping coordinator's is none",
            labels=["form"],
        )
        for form, c in counts.items():
            built.add_metric([form], c.built)
            failed.add_metric([form], c.failed)
        yield built
        yield failed


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


class CoordinatorMetrics:
    """The coordinator's metric registry (one per coordinator, no global state).

    ``sync_checkpoints()`` counts each checkpoint of the store once into ``warmswarm_checkpoints_total`` and its save
    time into the ``warmswarm_checkpoint_save_seconds`` histogram; it runs on each scrape, so the saver needs no hook.
    ``add_download_bytes(protocol, n)`` is called by the HTTP and gRPC download endpoints.
    """

    def __init__(self, store: Store):
        self.store = store
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StoreCollector(store))
        self.checkpoints_total = Counter(
            "warmswarm_checkpoints", "Checkpoints saved (seen by this coordinator process)", registry=self.registry
        )
        self.checkpoint_save_seconds = Histogram(
            "warmswarm_checkpoint_save_seconds", "Time to save one checkpoint",
            buckets=SAVE_SECONDS_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.download_bytes_total = Counter(
            "warmswarm_download_bytes", "Checkpoint bytes sent to downloaders", ["protocol"], registry=self.registry
        )
        for protocol in PROTOCOLS:
            self.download_bytes_total.labels(protocol)  # export zeros, so rate() works from the first download
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def sync_checkpoints(self) -> None:
        with self._lock:
            for row in self.store.checkpoints():
                if row.name in self._seen:
                    continue
                self._seen.add(row.name)
                self.checkpoints_total.inc()
                if row.save_seconds is not None:
                    self.checkpoint_save_seconds.observe(row.save_seconds)

    def add_download_bytes(self, protocol: str, n: int) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown download protocol {protocol!r}")
        if n > 0:
            self.download_bytes_total.labels(protocol).inc(n)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric, fresh from the store."""
        self.sync_checkpoints()
        return generate_latest(self.registry)
