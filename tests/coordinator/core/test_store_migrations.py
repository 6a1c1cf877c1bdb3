"""The coordinator's SQLite file carries its schema version: a newer file is refused untouched, an older one is
brought up to date in one transaction (coordinator.store_migrations)."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

from coordinator.store import Store
from coordinator.store_migrations import SCHEMA_VERSION, migrate, stored_version
from peer.errors import UserError


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_new_file_records_the_current_schema_version(tmp_path):
    with Store(tmp_path / "c.sqlite") as store:
        assert stored_version(store._db) == SCHEMA_VERSION


def test_a_file_from_a_newer_warmswarm_is_refused_in_one_line_and_left_as_it_was(tmp_path):
    path = tmp_path / "c.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.close()
    before = _digest(path)
    for readonly in (False, True):
        with pytest.raises(UserError) as refused:
            Store(path, readonly=readonly)
        message = str(refused.value)
        assert "\n" not in message and f"schema version {SCHEMA_VERSION + 1}" in message and "newer" in message
    assert _digest(path) == before


def _old_file(tmp_path) -> sqlite3.Connection:
    db = sqlite3.connect(tmp_path / "old.sqlite")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("CREATE TABLE peers (peer_id TEXT PRIMARY KEY)")
        db.execute("INSERT INTO peers VALUES ('QmA')")
    return db


def _columns(db: sqlite3.Connection) -> list[str]:
    return [row[1] for row in db.execute("PRAGMA table_info(peers)")]


def test_an_older_file_takes_each_step_up_to_the_current_version(tmp_path):
    db = _old_file(tmp_path)
    steps = {
        1: lambda d: d.execute("ALTER TABLE peers ADD COLUMN region TEXT NOT NULL DEFAULT ''"),
        2: lambda d: d.execute("UPDATE peers SET region = 'eu'"),
    }
    assert migrate(db, "old.sqlite", target=3, migrations=steps) == (1, 3)
    assert stored_version(db) == 3 and _columns(db) == ["peer_id", "region"]
    assert db.execute("SELECT region FROM peers").fetchall() == [("eu",)]
    assert migrate(db, "old.sqlite", target=3, migrations=steps) == (3, 3)  # nothing left to do


def test_a_failed_step_leaves_the_older_file_as_it_was(tmp_path):
    db = _old_file(tmp_path)

    def broken(d: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    steps = {1: lambda d: d.execute("ALTER TABLE peers ADD COLUMN region TEXT NOT NULL DEFAULT ''"), 2: broken}
    with pytest.raises(sqlite3.OperationalError):
        migrate(db, "old.sqlite", target=3, migrations=steps)
    assert stored_version(db) == 1 and _columns(db) == ["peer_id"]


def test_a_missing_step_is_refused_before_anything_is_written(tmp_path):
    db = _old_file(tmp_path)
    with pytest.raises(UserError, match="no upgrade from schema version 2"):
        migrate(db, "old.sqlite", target=3, migrations={1: lambda d: d.execute("ALTER TABLE peers ADD COLUMN x")})
    assert stored_version(db) == 1 and _columns(db) == ["peer_id"]


def test_a_version_1_file_gains_the_evaluation_tables_and_keeps_its_history(tmp_path):
    """A coordinator data dir from before evaluations (schema 1) opens with its run, checkpoints and history intact,
    and records evaluations afterwards."""
    from coordinator.store import CheckpointRow, EvaluationScore

    path = tmp_path / "v1.sqlite"
    with Store(path) as store:
        store.open_run("r", {"run_id": "r"})
        store.record_progress(5, 1, 2.0, 3.0, now=100.0)
        store.record_checkpoint(CheckpointRow("ckpt-000005", 5, 100.0))
    db = sqlite3.connect(path)  # as schema 1 left it: no evaluation tables, no stages, version 1
    with db:
        db.execute("DROP TABLE evaluations")
        db.execute("DROP TABLE evaluation_attempts")
        db.execute("ALTER TABLE history DROP COLUMN stage")
        db.execute("ALTER TABLE checkpoints DROP COLUMN stage")
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    db.close()
    with Store(path) as store:
        assert stored_version(store._db) == SCHEMA_VERSION == 3
        assert [c.name for c in store.checkpoints()] == ["ckpt-000005"] and store.progress().global_step == 5
        assert store.evaluations() == [] and store.evaluation_attempts() == {}
        score = EvaluationScore("ckpt-000005", 5, "checkpoint", "lee", "spearman", 0.5, 0.1, [0, 1], [0.4, 0.6])
        store.record_evaluation("ckpt-000005", 5, [score], seconds=3.0)
        assert store.evaluations() == [score]


def test_a_version_2_file_gains_the_growth_stages_and_keeps_its_history(tmp_path):
    """A data dir from before growth stages (schema 2) opens with its history and checkpoints as stage 0, and records
    the stages of later points and checkpoints."""
    from coordinator.store import CheckpointRow

    path = tmp_path / "v2.sqlite"
    with Store(path) as store:
        store.open_run("r", {"run_id": "r"})
        store.record_progress(5, 1, 2.0, 3.0, now=100.0)
        store.record_checkpoint(CheckpointRow("ckpt-000005", 5, 100.0))
    db = sqlite3.connect(path)  # as schema 2 left it: no stage columns
    with db:
        db.execute("ALTER TABLE history DROP COLUMN stage")
        db.execute("ALTER TABLE checkpoints DROP COLUMN stage")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    with Store(path) as store:
        assert stored_version(store._db) == SCHEMA_VERSION == 3
        assert [(h.step, h.stage) for h in store.history()] == [(5, 0)]
        assert [(c.name, c.stage) for c in store.checkpoints()] == [("ckpt-000005", 0)]
        store.record_progress(7, 1, 2.0, 3.0, now=110.0, stage=1)
        store.record_checkpoint(CheckpointRow("ckpt-000007", 7, 110.0, stage=1))
        assert [(h.step, h.stage) for h in store.history()] == [(5, 0), (7, 1)]
        assert [(c.name, c.stage) for c in store.checkpoints()] == [("ckpt-000005", 0), ("ckpt-000007", 1)]
