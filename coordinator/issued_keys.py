"""What the token authority handed out (``IssuedKeys``), kept in ``issued_keys.sqlite`` in the data dir so that
removing or banning a volunteer revokes their keys within seconds, across coordinator restarts (see
``coordinator.auth``)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from peer.errors import UserError

logger = logging.getLogger(__name__)


REMOVED_REASON = "removed from the allowlist"
BANNED_REASON = "banned"


class IssuedKeys:
    """What the authority handed out, per volunteer: the keys it issued tokens to (``key_fingerprint``, hex) and the
    libp2p ids seen in their member records, each with the allowlist grant it was issued under, until when a token
    may still admit it, and whether it is revoked. One small SQLite file of its own (the store's tables are the
    monitor's); thread-safe (the HTTP handler records keys, the wait loop revokes)."""

    KEY, PEER = "key", "peer"
    SCHEMA = """
    CREATE TABLE IF NOT EXISTS issued (
        run_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        value TEXT NOT NULL,
        name TEXT NOT NULL,
        grant_hash TEXT NOT NULL,
        expires REAL NOT NULL,
        revoked REAL,
        reason TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (run_id, kind, value)
    );
    """

    def __init__(self, path: str | Path, run_id: str):
        self.path, self.run_id = Path(path), run_id
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # as the store: durable commits without a sync each
            self._db.execute("PRAGMA synchronous=NORMAL")
            with self._db:
                self._db.executescript(self.SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"cannot open the issued-keys database {self.path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(self, kind: str, value: str, name: str, grant: str, expires: float) -> None:
        """Remembers ``value`` (a key fingerprint in hex, or a libp2p id) for ``name`` under ``grant``; a later token
        only pushes ``expires`` back. The first grant stays: a key issued under an old secret stays that secret's."""
        self.record_many(kind, [(value, name, grant, expires)])

    def record_many(self, kind: str, rows: list[tuple[str, str, str, float]]) -> None:
        """``record`` for many (value, name, grant, expires) in one transaction (the member ids of every pass)."""
        if not rows:
            return
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO issued (run_id, kind, value, name, grant_hash, expires) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, kind, value) DO UPDATE SET expires = MAX(expires, excluded.expires)",
                [(self.run_id, kind, value, name, grant, float(expires)) for value, name, grant, expires in rows],
            )

    def is_revoked(self, kind: str, value: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT revoked FROM issued WHERE run_id = ? AND kind = ? AND value = ?", (self.run_id, kind, value)
            ).fetchone()
        return row is not None and row[0] is not None

    def revoke_departed(self, grants: dict[str, str], banned: set[str], now: float | None = None) -> set[str]:
        """Revokes every entry whose volunteer is no longer listed under the grant it was issued with, or is banned;
        returns the names newly revoked."""
        now = time.time() if now is None else now
        with self._lock, self._db:
            rows = self._db.execute(
                "SELECT DISTINCT name, grant_hash FROM issued WHERE run_id = ? AND revoked IS NULL", (self.run_id,)
            ).fetchall()
            revoked = set()
            for name, grant in rows:
                if name in banned:
                    reason = BANNED_REASON
                elif grants.get(name) != grant:
                    reason = REMOVED_REASON
                else:
                    continue
                self._db.execute(
                    "UPDATE issued SET revoked = ?, reason = ? "
                    "WHERE run_id = ? AND name = ? AND grant_hash = ? AND revoked IS NULL",
                    (now, reason, self.run_id, name, grant),
                )
                revoked.add(name)
        return revoked

    def revoked(self, now: float) -> tuple[list[bytes], list[str]]:
        """(key fingerprints, libp2p ids) revoked and still able to matter: some token issued for them has not
        expired at ``now``. The published list holds only these, so it stays small."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, value FROM issued WHERE run_id = ? AND revoked IS NOT NULL AND expires > ? "
                "ORDER BY revoked DESC",
                (self.run_id, now),
            ).fetchall()
        keys = [bytes.fromhex(value) for kind, value in rows if kind == self.KEY]
        return keys, [value for kind, value in rows if kind == self.PEER]

    def entries(self) -> list[tuple[str, str, str, str]]:
        """(kind, value, name, reason or "") of every entry, for the operator and tests."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, value, name, reason FROM issued WHERE run_id = ? ORDER BY name, kind, value",
                (self.run_id,),
            ).fetchall()
        return [tuple(row) for row in rows]
