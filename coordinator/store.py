"""The coordinator's memory: one SQLite file (WAL) holding runs, peers, contribution, metric history, checkpoints
and rejected-record counts, so that a coordinator restart loses no history.

Why SQLite in WAL mode: the monitor is the one writer while the HTTP and gRPC layers read concurrently (from other
threads, or other processes opening the same file); WAL lets readers proceed during a write and makes every
committed transaction durable across a SIGKILL. Every writer method is one transaction.

Read API (what ``coordinator.api`` calls): ``progress()``, ``peers()``, ``history(since)``, ``checkpoints()``,
``rejected_counts()``, ``run_config()``, ``evaluations()``, ``evaluation_attempts()``, ``export_builds()``. Writer
API (what the monitor, the checkpoint saver and the background evaluator and exporter call): ``open_run``,
``observe_peer``, ``set_peer_rates``, ``record_progress``, ``add_rejected``, ``record_checkpoint``,
``remove_checkpoint``, ``set_banned``, ``add_ban``, ``record_contribution_rejections``, ``record_evaluation``,
``record_evaluation_failure``, ``declare_export_forms``, ``count_export_builds``. All reads are for the store's
run (the ``run_id`` given to ``open_run``, or the most recently opened run when a reader opens the file without one).
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.rates import ETA_WINDOW, eta_seconds
from coordinator.store_migrations import EVALUATION_TABLES, SCHEMA_VERSION, migrate, stored_version
from peer.errors import UserError
from peer.run.checkpoint_manifest import FileDigest

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    config_json TEXT NOT NULL,
    created REAL NOT NULL,
    opened REAL NOT NULL,
    global_step INTEGER NOT NULL DEFAULT 0,
    samples_total INTEGER NOT NULL DEFAULT 0,
    samples_per_second REAL NOT NULL DEFAULT 0,
    loss REAL,
    alive_peers INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER,
    updated REAL
);
CREATE TABLE IF NOT EXISTS peers (
    run_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    seconds_online REAL NOT NULL DEFAULT 0,
    samples INTEGER NOT NULL DEFAULT 0,
    last_samples_total INTEGER NOT NULL DEFAULT 0,
    last_step INTEGER NOT NULL DEFAULT 0,
    last_loss REAL,
    last_samples_per_second REAL NOT NULL DEFAULT 0,
    banned INTEGER NOT NULL DEFAULT 0,
    ban_reason TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, peer_id)
);
CREATE TABLE IF NOT EXISTS history (
    run_id TEXT NOT NULL,
    time REAL NOT NULL,
    step INTEGER NOT NULL,
    loss REAL,
    samples_per_second REAL NOT NULL,
    alive_peers INTEGER NOT NULL,
    samples_total INTEGER NOT NULL,
    stage INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS history_by_time ON history (run_id, time);
CREATE TABLE IF NOT EXISTS checkpoints (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    created REAL NOT NULL,
    files_json TEXT NOT NULL,
    save_seconds REAL,
    stage INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS rejected (
    run_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (run_id, reason)
);
CREATE TABLE IF NOT EXISTS bans (
    run_id TEXT NOT NULL,
    peer_id TEXT NOT NULL,
    store_peer_id TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    reporters INTEGER NOT NULL DEFAULT 0,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, peer_id)
);
CREATE TABLE IF NOT EXISTS export_builds (
    run_id TEXT NOT NULL,
    form TEXT NOT NULL,
    built INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, form)
);
CREATE TABLE IF NOT EXISTS contribution_rejections (
    run_id TEXT NOT NULL,
    reporter TEXT NOT NULL,
    reason TEXT NOT NULL,
    total INTEGER NOT NULL,
    PRIMARY KEY (run_id, reporter, reason)
);
"""
    + EVALUATION_TABLES
)


@dataclass(frozen=True)
class Progress:
    """The run at a glance, as of the monitor's last pass (``updated`` None = never observed)."""

    run_id: str
    global_step: int
    alive_peers: int
    samples_per_second: float
    loss: float | None
    samples_total: int
    total_steps: int | None
    eta_seconds: float | None  # from the recent step rate while progress is live (``rates.eta_seconds``); else None
    last_checkpoint_step: int | None
    updated: float | None


@dataclass(frozen=True)
class PeerRow:
    """One volunteer's contribution. ``peer_id`` is the hex sha256 of the public key that signs the peer's records,
    which a peer keeps next to its ``--identity_path`` (``peer.swarm.record_key``), so all its sessions share one row;
    ``short_id`` its first 8 characters for display. ``samples_per_second`` is the rate of its credited samples over
    the monitor's window, and 0 once the peer is not alive."""

    peer_id: str
    short_id: str
    name: str
    samples: int
    seconds_online: float
    first_seen: float
    last_seen: float
    step: int
    loss: float | None
    samples_per_second: float
    alive: bool
    banned: bool
    ban_reason: str


@dataclass(frozen=True)
class BanRow:
    """A peer banned for the run by the coordinator (``coordinator.bans``). ``peer_id`` is its libp2p id (what the
    averagers see); ``store_peer_id`` its row in ``peers`` (sha256 of its public key) when its metrics were seen."""

    peer_id: str
    store_peer_id: str
    name: str
    reason: str
    reporters: int
    time: float


@dataclass(frozen=True)
class HistoryPoint:
    time: float
    step: int
    loss: float | None
    samples_per_second: float
    alive_peers: int
    samples_total: int
    stage: int = 0  # the growth stage the run was in at ``step`` (``growth.schedule``; 0 without one)


@dataclass(frozen=True)
class CheckpointRow:
    name: str  # ckpt-000120
    step: int
    created: float
    files: list[FileDigest] = field(default_factory=list)
    save_seconds: float | None = None
    stage: int = 0  # the growth stage of the model it holds (``peer.run.checkpoint_manifest``)

    @property
    def size_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class EvaluationScore:
    """One metric of one evaluated model of a checkpoint: ``mean`` and ``sd`` over ``seeds`` (``scores[i]`` with
    ``seeds[i]``); a held-out pretraining metric is ``task`` "heldout" with no seeds and sd 0. ``role`` is
    "checkpoint", or a reference ("source", "random_init") when those were evaluated beside it. ``mean`` None: the
    metric was not a number (a NaN, which SQLite cannot store)."""

    checkpoint: str
    step: int
    role: str
    task: str
    metric: str
    mean: float | None
    sd: float | None
    seeds: list[int] = field(default_factory=list)
    scores: list[float | None] = field(default_factory=list)


@dataclass(frozen=True)
class ExportBuilds:
    """How often the background exporter built one form, of any checkpoint, and how often a build of it failed; all
    time for the run (a checkpoint's pruning takes its exports and failure records off the disk, not these)."""

    built: int = 0
    failed: int = 0


@dataclass(frozen=True)
class EvaluationAttempts:
    """Where the evaluation of one checkpoint stands: ``done`` once its scores are recorded; otherwise the failed
    ``attempts`` so far and the last one's one-line ``error``."""

    checkpoint: str
    step: int
    done: bool
    attempts: int
    error: str
    seconds: float | None
    updated: float


@dataclass(frozen=True)
class PeerObservation:
    """What the monitor read for one peer in one pass (a validated ``LocalMetrics`` plus the peer's identity)."""

    peer_id: str
    name: str
    step: int
    samples_total: int  # the volunteer's count: on across its sessions with an identity file, else this session's
    samples_per_second: float | None  # None: leave the row's rate as it is (the monitor sets it with set_peer_rates)
    loss: float | None
    time: float  # coordinator clock when observed


def credited_samples(prev_total: int, total: int) -> int:
    """Samples a new record adds to a volunteer's contribution: its increase since the last one, or all of it when
    the count went down. A volunteer with an identity file counts on across its sessions
    (``peer.swarm.sample_count``); a count that goes down is one that started again at 0 (its count file lost), and
    everything it counts since is new."""
    return total if total < prev_total else total - prev_total


class Store:
    """A handle on the coordinator's SQLite file. Thread-safe (one connection behind a lock); one process should
    write. ``alive_window`` is how long after its last record a peer still counts as alive."""

    def __init__(self, path: str | Path, alive_window: float = 60.0, readonly: bool = False):
        self.path = Path(path)
        self.alive_window = alive_window
        self._lock = threading.RLock()
        if readonly:
            if not self.path.is_file():
                raise UserError(f"no coordinator database at {self.path}")
            uri = f"file:{self.path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30)
            self._refuse_newer_schema()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
                self._refuse_newer_schema()  # before any write: a newer file is refused untouched
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                migrate(self._db, str(self.path))
                with self._db:
                    self._db.executescript(_SCHEMA)
                    self._db.execute(
                        "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
            except sqlite3.DatabaseError as e:
                raise UserError(f"cannot open coordinator database {self.path}: {e}") from None
        self._db.row_factory = sqlite3.Row
        self.run_id = self._latest_run_id()

    def _refuse_newer_schema(self) -> None:
        """UserError (the connection closed) for a file written by a newer warmswarm."""
        try:
            found = stored_version(self._db)
        except sqlite3.DatabaseError:
            found = None  # not a database: the caller's own error says so
        if found is not None and found > SCHEMA_VERSION:
            self._db.close()
            raise UserError(
                f"coordinator database {self.path} has schema version {found}, newer than this warmswarm reads "
                f"({SCHEMA_VERSION}): run the newer warmswarm, or use another --data_dir"
            )

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _latest_run_id(self) -> str | None:
        try:
            row = self._db.execute("SELECT run_id FROM runs ORDER BY opened DESC LIMIT 1").fetchone()
        except sqlite3.OperationalError:  # a read-only handle on a file that has no tables yet
            return None
        return row[0] if row else None

    def _run(self) -> str:
        if self.run_id is None:
            self.run_id = self._latest_run_id()
            if self.run_id is None:
                raise UserError(f"no run recorded in {self.path} yet")
        return self.run_id

    def _select(self, sql: str, *args) -> list[sqlite3.Row]:
        """The rows of a query of this run: the first ``?`` of ``sql`` is the run id, ``args`` fill the others."""
        run_id = self._run()
        with self._lock:
            return self._db.execute(sql, (run_id, *args)).fetchall()

    # ---------------------------------------------------------------- writers

    def open_run(self, run_id: str, config: dict, total_steps: int | None = None, now: float | None = None) -> None:
        """Creates the run or resumes it (keeping its history); later reads and writes are for this run."""
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO runs (run_id, config_json, created, opened, total_steps) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET config_json = excluded.config_json, opened = excluded.opened, "
                "total_steps = excluded.total_steps",
                (run_id, json.dumps(config, sort_keys=True), now, now, total_steps),
            )
        self.run_id = run_id

    def observe_peer(self, obs: PeerObservation) -> int:
        """Folds one observation into the volunteer's contribution and returns the samples credited to it so far.

        Samples: all of the first record's count (the samples it made before the coordinator saw it), then each
        record's ``credited_samples``, so a volunteer's sessions add up in one row. Time online: the gap since the
        last observation, counted only while the peer stayed within the alive window (a peer that vanished for an
        hour is not credited the hour)."""
        run_id = self._run()
        with self._lock, self._db:
            row = self._db.execute(
                "SELECT last_seen, last_samples_total, samples FROM peers WHERE run_id = ? AND peer_id = ?",
                (run_id, obs.peer_id),
            ).fetchone()
            if row is None:
                self._db.execute(
                    "INSERT INTO peers (run_id, peer_id, name, first_seen, last_seen, samples, last_samples_total, "
                    "last_step, last_loss, last_samples_per_second) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        run_id,
                        obs.peer_id,
                        obs.name,
                        obs.time,
                        obs.time,
                        obs.samples_total,
                        obs.samples_total,
                        obs.step,
                        obs.loss,
                        obs.samples_per_second or 0.0,
                    ),
                )
                return obs.samples_total
            gap = obs.time - row["last_seen"]
            online = gap if 0 < gap <= self.alive_window else 0.0
            new_samples = credited_samples(row["last_samples_total"], obs.samples_total)
            self._db.execute(
                "UPDATE peers SET name = ?, last_seen = MAX(last_seen, ?), seconds_online = seconds_online + ?, "
                "samples = samples + ?, last_samples_total = ?, last_step = ?, last_loss = ?, "
                "last_samples_per_second = COALESCE(?, last_samples_per_second) WHERE run_id = ? AND peer_id = ?",
                (
                    obs.name or "",
                    obs.time,
                    online,
                    new_samples,
                    obs.samples_total,
                    obs.step,
                    obs.loss,
                    obs.samples_per_second,
                    run_id,
                    obs.peer_id,
                ),
            )
            return row["samples"] + new_samples

    def set_peer_rates(self, rates: dict[str, float]) -> None:
        """Sets each listed volunteer's samples/s (peer id -> rate), as the monitor computes it every pass."""
        run_id = self._run()
        with self._lock, self._db:
            self._db.executemany(
                "UPDATE peers SET last_samples_per_second = ? WHERE run_id = ? AND peer_id = ?",
                [(float(rate), run_id, pid) for pid, rate in rates.items()],
            )

    def record_progress(
        self,
        global_step: int,
        alive_peers: int,
        samples_per_second: float,
        loss: float | None,
        now: float | None = None,
        stage: int = 0,
    ) -> None:
        """Appends a history point and updates the run's current figures. ``samples_total`` is the sum of all
        peers' credited samples (so it survives peers leaving, and restarts of the coordinator); ``stage``: the
        growth stage of the run's global step (one history across stages: the stage is a column, not a table)."""
        run_id = self._run()
        now = time.time() if now is None else now
        with self._lock, self._db:
            samples_total = self._db.execute(
                "SELECT COALESCE(SUM(samples), 0) FROM peers WHERE run_id = ?", (run_id,)
            ).fetchone()[0]
            step = max(
                global_step, self._db.execute("SELECT global_step FROM runs WHERE run_id = ?", (run_id,)).fetchone()[0]
            )
            self._db.execute(
                "UPDATE runs SET global_step = ?, samples_total = ?, samples_per_second = ?, loss = ?, "
                "alive_peers = ?, updated = ? WHERE run_id = ?",
                (step, samples_total, samples_per_second, loss, alive_peers, now, run_id),
            )
            self._db.execute(
                "INSERT INTO history (run_id, time, step, loss, samples_per_second, alive_peers, samples_total, "
                "stage) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, now, step, loss, samples_per_second, alive_peers, samples_total, stage),
            )

    def add_rejected(self, counts: dict[str, int]) -> None:
        """Adds ``counts`` (reason -> number of newly rejected records) to the run's totals."""
        run_id = self._run()
        with self._lock, self._db:
            for reason, n in counts.items():
                if n <= 0:
                    continue
                self._db.execute(
                    "INSERT INTO rejected (run_id, reason, count) VALUES (?, ?, ?) "
                    "ON CONFLICT (run_id, reason) DO UPDATE SET count = count + excluded.count",
                    (run_id, reason, int(n)),
                )

    def record_checkpoint(self, row: CheckpointRow) -> None:
        run_id = self._run()
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in row.files]
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO checkpoints (run_id, name, step, created, files_json, save_seconds, stage) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, row.name, row.step, row.created, json.dumps(files), row.save_seconds, row.stage),
            )

    def remove_checkpoint(self, name: str) -> None:
        run_id = self._run()
        with self._lock, self._db:
            self._db.execute("DELETE FROM checkpoints WHERE run_id = ? AND name = ?", (run_id, name))

    def set_banned(self, peer_id: str, banned: bool = True, reason: str = "") -> None:
        run_id = self._run()
        with self._lock, self._db:
            self._db.execute(
                "UPDATE peers SET banned = ?, ban_reason = ? WHERE run_id = ? AND peer_id = ?",
                (int(banned), reason if banned else "", run_id, peer_id),
            )

    def add_ban(self, row: BanRow) -> None:
        """Records a ban (idempotent: the first verdict stays) and marks the volunteer's peer row banned."""
        run_id = self._run()
        with self._lock, self._db:
            inserted = self._db.execute(
                "INSERT OR IGNORE INTO bans (run_id, peer_id, store_peer_id, name, reason, reporters, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, row.peer_id, row.store_peer_id, row.name, row.reason, row.reporters, row.time),
            ).rowcount
            if inserted and row.store_peer_id:
                self._db.execute(
                    "UPDATE peers SET banned = 1, ban_reason = ? WHERE run_id = ? AND peer_id = ?",
                    (row.reason, run_id, row.store_peer_id),
                )

    def identify_ban(self, peer_id: str, store_peer_id: str, name: str) -> None:
        """Links a ban decided before the peer's metrics were seen to its volunteer row (and marks that row)."""
        run_id = self._run()
        with self._lock, self._db:
            updated = self._db.execute(
                "UPDATE bans SET store_peer_id = ?, name = ? WHERE run_id = ? AND peer_id = ? AND store_peer_id = ''",
                (store_peer_id, name, run_id, peer_id),
            ).rowcount
            if updated:
                self._db.execute(
                    "UPDATE peers SET banned = 1, ban_reason = (SELECT reason FROM bans WHERE run_id = ? AND "
                    "peer_id = ?) WHERE run_id = ? AND peer_id = ?",
                    (run_id, peer_id, run_id, store_peer_id),
                )

    def record_contribution_rejections(self, reporter: str, totals: dict[str, int]) -> None:
        """A reporter's all-time rejected contributions by reason; totals only grow (a stale report is ignored)."""
        run_id = self._run()
        with self._lock, self._db:
            for reason, total in totals.items():
                self._db.execute(
                    "INSERT INTO contribution_rejections (run_id, reporter, reason, total) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (run_id, reporter, reason) DO UPDATE SET total = MAX(total, excluded.total)",
                    (run_id, reporter, reason, int(total)),
                )

    def record_evaluation(
        self, checkpoint: str, step: int, scores: list[EvaluationScore], seconds: float, now: float | None = None
    ) -> None:
        """Records a checkpoint's evaluation (replacing any earlier one of it) and marks it done, in one
        transaction: a crash leaves either the whole evaluation or none of it."""
        run_id = self._run()
        now = time.time() if now is None else now
        rows = [
            (run_id, checkpoint, step, s.role, s.task, s.metric, _real(s.mean), _real(s.sd), json.dumps(s.seeds),
             json.dumps([_real(x) for x in s.scores]), now)
            for s in scores
        ]  # fmt: skip
        with self._lock, self._db:
            self._db.execute("DELETE FROM evaluations WHERE run_id = ? AND checkpoint = ?", (run_id, checkpoint))
            self._db.executemany(
                "INSERT INTO evaluations (run_id, checkpoint, step, role, task, metric, mean, sd, seeds_json, "
                "scores_json, time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._db.execute(
                "INSERT INTO evaluation_attempts (run_id, checkpoint, step, done, attempts, error, seconds, updated) "
                "VALUES (?, ?, ?, 1, 0, '', ?, ?) ON CONFLICT (run_id, checkpoint) DO UPDATE SET done = 1, "
                "error = '', seconds = excluded.seconds, updated = excluded.updated",
                (run_id, checkpoint, step, seconds, now),
            )

    def record_evaluation_failure(self, checkpoint: str, step: int, error: str, now: float | None = None) -> int:
        """Counts one failed evaluation of ``checkpoint`` (kept across restarts, so retries stay bounded); returns
        the failures so far."""
        run_id = self._run()
        now = time.time() if now is None else now
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO evaluation_attempts (run_id, checkpoint, step, done, attempts, error, updated) "
                "VALUES (?, ?, ?, 0, 1, ?, ?) ON CONFLICT (run_id, checkpoint) DO UPDATE SET "
                "attempts = attempts + 1, error = excluded.error, updated = excluded.updated",
                (run_id, checkpoint, step, error, now),
            )
            return self._db.execute(
                "SELECT attempts FROM evaluation_attempts WHERE run_id = ? AND checkpoint = ?", (run_id, checkpoint)
            ).fetchone()[0]

    # ---------------------------------------------------------------- readers

    def evaluations(self, checkpoint: str | None = None) -> list[EvaluationScore]:
        """Recorded scores (of every checkpoint, or of one), by step, then role, task and metric. Scores outlive
        their checkpoint's pruning: they are the run's quality over its steps."""
        where, args = ("AND checkpoint = ?", (checkpoint,)) if checkpoint else ("", ())
        rows = self._select(f"SELECT * FROM evaluations WHERE run_id = ? {where} ORDER BY step, role, task, metric",
                            *args)  # fmt: skip
        return [
            EvaluationScore(
                checkpoint=r["checkpoint"],
                step=r["step"],
                role=r["role"],
                task=r["task"],
                metric=r["metric"],
                mean=r["mean"],
                sd=r["sd"],
                seeds=json.loads(r["seeds_json"]),
                scores=json.loads(r["scores_json"]),
            )  # fmt: skip
            for r in rows
        ]

    def evaluation_attempts(self) -> dict[str, EvaluationAttempts]:
        """Every checkpoint whose evaluation finished or failed at least once, by name."""
        rows = self._select("SELECT * FROM evaluation_attempts WHERE run_id = ? ORDER BY step")
        return {
            r["checkpoint"]: EvaluationAttempts(
                r["checkpoint"], r["step"], bool(r["done"]), r["attempts"], r["error"], r["seconds"], r["updated"]
            )
            for r in rows
        }

    def latest_evaluation(self) -> list[EvaluationScore]:
        """The scores of the newest evaluated checkpoint (by step); empty before any."""
        rows = self._select(
            "SELECT checkpoint FROM evaluation_attempts WHERE run_id = ? AND done = 1 ORDER BY step DESC LIMIT 1"
        )
        return self.evaluations(rows[0][0]) if rows else []

    def bans(self) -> list[BanRow]:
        rows = self._select("SELECT * FROM bans WHERE run_id = ? ORDER BY time")
        return [
            BanRow(r["peer_id"], r["store_peer_id"], r["name"], r["reason"], r["reporters"], r["time"]) for r in rows
        ]

    def banned_names(self) -> set[str]:
        """Volunteer names of the banned peers (the allowlist issues them no more tokens)."""
        return {b.name for b in self.bans() if b.name}

    def rejected_contribution_counts(self) -> dict[str, int]:
        """Contributions the peers' reducers rejected, by reason (clipped, non_finite), summed over reporters."""
        rows = self._select(
            "SELECT reason, SUM(total) AS n FROM contribution_rejections WHERE run_id = ? GROUP BY reason"
        )
        return {r["reason"]: int(r["n"]) for r in rows}

    def run_config(self) -> dict:
        return json.loads(self._select("SELECT config_json FROM runs WHERE run_id = ?")[0][0])

    def samples_total(self) -> int:
        """Samples credited to all volunteers of the run (what ``record_progress`` writes as the run's total)."""
        return self._select("SELECT COALESCE(SUM(samples), 0) FROM peers WHERE run_id = ?")[0][0]

    def progress(self, now: float | None = None) -> Progress:
        """The run's figures as of the monitor's last pass. Once that pass is older than the alive window (the
        coordinator or its monitor stopped) samples/s reads 0 and there is no ETA: nothing says progress goes on."""
        run_id = self._run()
        now = time.time() if now is None else now
        with self._lock:
            run = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            last_ckpt = self._db.execute("SELECT MAX(step) FROM checkpoints WHERE run_id = ?", (run_id,)).fetchone()[0]
            steps = self._db.execute(
                "SELECT time, step FROM history WHERE run_id = ? AND time >= ? AND time <= ? ORDER BY time",
                (run_id, now - ETA_WINDOW, now),
            ).fetchall()
        live = run["updated"] is not None and now - run["updated"] <= self.alive_window
        eta = eta_seconds(
            [(steps[0][0], steps[0][1]), (steps[-1][0], steps[-1][1])] if steps else [],
            run["total_steps"],
            run["global_step"],
            run["alive_peers"],
            run["updated"],
            now,
            stale_after=self.alive_window,
        )
        return Progress(
            run_id=run_id,
            global_step=run["global_step"],
            alive_peers=run["alive_peers"],
            samples_per_second=run["samples_per_second"] if live else 0.0,
            loss=run["loss"],
            samples_total=run["samples_total"],
            total_steps=run["total_steps"],
            eta_seconds=eta,
            last_checkpoint_step=last_ckpt,
            updated=run["updated"],
        )

    def peers(self, now: float | None = None) -> list[PeerRow]:
        """All peers ever seen in this run, most samples first (the leaderboard order)."""
        now = time.time() if now is None else now
        rows = self._select("SELECT * FROM peers WHERE run_id = ? ORDER BY samples DESC, first_seen ASC")
        return [
            PeerRow(
                peer_id=r["peer_id"],
                short_id=r["peer_id"][:8],
                name=r["name"] or r["peer_id"][:8],
                samples=r["samples"],
                seconds_online=r["seconds_online"],
                first_seen=r["first_seen"],
                last_seen=r["last_seen"],
                step=r["last_step"],
                loss=r["last_loss"],
                samples_per_second=r["last_samples_per_second"] if now - r["last_seen"] <= self.alive_window else 0.0,
                alive=now - r["last_seen"] <= self.alive_window,
                banned=bool(r["banned"]),
                ban_reason=r["ban_reason"],
            )
            for r in rows
        ]

    def history(self, since: float | None = None, limit: int = 5000) -> list[HistoryPoint]:
        """History points after ``since`` (unix time), oldest first; at most the newest ``limit`` of them."""
        rows = self._select(
            "SELECT * FROM (SELECT time, step, loss, samples_per_second, alive_peers, samples_total, stage "
            "FROM history WHERE run_id = ? AND time > ? ORDER BY time DESC LIMIT ?) ORDER BY time ASC",
            -1.0 if since is None else since,
            limit,
        )
        return [HistoryPoint(*r) for r in rows]

    def checkpoints(self) -> list[CheckpointRow]:
        """Verified checkpoints on disk, oldest first (newest last, as the HTTP API lists them)."""
        rows = self._select(
            "SELECT name, step, created, files_json, save_seconds, stage FROM checkpoints WHERE run_id = ? "
            "ORDER BY step ASC, created ASC"
        )
        return [
            CheckpointRow(
                name=r["name"],
                step=r["step"],
                created=r["created"],
                files=[FileDigest(**f) for f in json.loads(r["files_json"])],
                save_seconds=r["save_seconds"],
                stage=r["stage"],
            )
            for r in rows
        ]

    def count_export_builds(self, built: list[str], failed: list[str]) -> None:
        """Adds one build to each form in ``built`` and one failure to each in ``failed`` (a worker's outcome)."""
        run_id = self._run()
        with self._lock, self._db:
            for forms, column in ((built, "built"), (failed, "failed")):
                for form in forms:
                    self._db.execute(
                        f"INSERT INTO export_builds (run_id, form, {column}) VALUES (?, ?, 1) "
                        f"ON CONFLICT (run_id, form) DO UPDATE SET {column} = {column} + 1",
                        (run_id, form),
                    )

    def declare_export_forms(self, forms: tuple[str, ...] | list[str]) -> None:
        """Gives each form a count (zero if it has none yet), so a counter exists before its first increment."""
        run_id = self._run()
        with self._lock, self._db:
            for form in forms:
                self._db.execute("INSERT OR IGNORE INTO export_builds (run_id, form) VALUES (?, ?)", (run_id, form))

    def export_builds(self) -> dict[str, ExportBuilds]:
        """The run's export builds and failures so far, by form (sorted)."""
        rows = self._select("SELECT form, built, failed FROM export_builds WHERE run_id = ? ORDER BY form")
        return {r["form"]: ExportBuilds(r["built"], r["failed"]) for r in rows}

    def rejected_counts(self) -> dict[str, int]:
        rows = self._select("SELECT reason, count FROM rejected WHERE run_id = ?")
        return {r["reason"]: r["count"] for r in rows}


def _real(x: float | None) -> float | None:
    """SQLite stores a NaN as NULL; say so explicitly (None) rather than rely on it."""
    return None if x is None or math.isnan(x) else float(x)
