"""Schema versions of the coordinator's SQLite file and the steps between them.

Why: a coordinator keeps its history across restarts and upgrades (a month-long run outlives a release). Each
file records the ``schema_version`` it was written with; opening it applies, in one transaction, the steps from
that version up to the code's, and refuses a file from a newer version, which the code cannot read safely, with one
line and without writing to it. A change to ``store._SCHEMA`` that existing files need (a new column, a changed
key) bumps ``SCHEMA_VERSION`` and adds its step here; a new table needs none (``CREATE TABLE IF NOT EXISTS``).

Version 2 adds the checkpoint evaluations (``evaluations``: scores; ``evaluation_attempts``: done or failed, with
the failures counted so retries stay bounded across restarts). They are new tables, but the version still moves:
evaluations are what a file records about its checkpoints, and an older warmswarm run on a version-2 file would
prune and save checkpoints without their evaluations and leave the dashboard's score history with holes nobody
explains; it is refused in one line instead, as for any newer file.

Version 3 adds the growth stage (``growth.schedule``) to each history point and checkpoint: one history across a
mid-run growth switch, with the switch visible in it, and checkpoints that say which model they hold. Older rows
are stage 0, which every run was in before schedules existed."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping

from peer.errors import UserError

SCHEMA_VERSION = 3

EVALUATION_TABLES = """
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    step INTEGER NOT NULL,
    role TEXT NOT NULL,
    task TEXT NOT NULL,
    metric TEXT NOT NULL,
    mean REAL,
    sd REAL,
    seeds_json TEXT NOT NULL,
    scores_json TEXT NOT NULL,
    time REAL NOT NULL,
    PRIMARY KEY (run_id, checkpoint, role, task, metric)
);
CREATE INDEX IF NOT EXISTS evaluations_by_step ON evaluations (run_id, step);
CREATE TABLE IF NOT EXISTS evaluation_attempts (
    run_id TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    step INTEGER NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    seconds REAL,
    updated REAL NOT NULL,
    PRIMARY KEY (run_id, checkpoint)
);
"""


def _add_evaluations(db: sqlite3.Connection) -> None:
    for statement in filter(str.strip, EVALUATION_TABLES.split(";")):
        db.execute(statement)  # not executescript: that would commit the migration's transaction half-way


def _add_stages(db: sqlite3.Connection) -> None:
    for table in ("history", "checkpoints"):
        db.execute(f"ALTER TABLE {table} ADD COLUMN stage INTEGER NOT NULL DEFAULT 0")


Migration = Callable[[sqlite3.Connection], None]
# MIGRATIONS[v] takes a file from version v to v + 1. Version 1 is the first released schema.
MIGRATIONS: Mapping[int, Migration] = {1: _add_evaluations, 2: _add_stages}


def stored_version(db: sqlite3.Connection) -> int | None:
    """The file's schema version; None for a new, empty file."""
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "meta" not in tables:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row is not None else 1  # files of the first schema wrote it; be lenient if one did not


def migrate(
    db: sqlite3.Connection,
    path: str,
    target: int = SCHEMA_VERSION,
    migrations: Mapping[int, Migration] = MIGRATIONS,
) -> tuple[int | None, int]:
    """Brings an open file to ``target`` (the caller then creates any missing tables); returns (found, now).

    Raises UserError, having written nothing, for a file newer than ``target`` or one with a step missing."""
    found = stored_version(db)
    if found is None:
        return None, target
    if found > target:
        raise UserError(
            f"coordinator database {path} has schema version {found}, newer than this warmswarm reads ({target}): "
            "run the newer warmswarm, or use another --data_dir"
        )
    missing = [v for v in range(found, target) if v not in migrations]
    if missing:
        raise UserError(f"coordinator database {path}: no upgrade from schema version {missing[0]} (a bug: report it)")
    if found < target:
        # one explicit transaction (sqlite3 would commit each ALTER TABLE on its own): a failed step leaves the file
        # as it was
        db.execute("BEGIN")
        try:
            for version in range(found, target):
                migrations[version](db)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
        except BaseException:
            db.rollback()
            raise
        db.commit()
    return found, target
