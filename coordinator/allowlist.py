"""A private run's allowlist: the organiser's text file of volunteers, one per line, secrets stored as sha256 only.

Edited with ``python -m coordinator allowlist add|remove|list`` (or by hand); read by the token authority
(``coordinator.auth``), which re-reads it whenever it changes. No hivemind import here: the ``allowlist``
commands stay quick. The file format and why a fast hash is enough: ``coordinator.auth``'s module docstring."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from peer.errors import UserError

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")  # also a dashboard display name (<= 64 characters)
HEADER = "# warmswarm allowlist: NAME<TAB>SHA256_OF_SECRET_HEX<TAB>ADDED_UTC (secrets are never stored)\n"


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class AllowlistEntry:
    name: str
    sha256: str
    added: str = ""


def parse_allowlist(text: str, source: str = "allowlist") -> dict[str, AllowlistEntry]:
    """Entries by name; UserError naming the first bad line."""
    entries: dict[str, AllowlistEntry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) not in (2, 3):
            raise UserError(f"{source} line {number}: expected NAME<TAB>SHA256[<TAB>ADDED], got {len(fields)} fields")
        name, digest = fields[0].strip(), fields[1].strip().lower()
        if not NAME_RE.fullmatch(name):
            raise UserError(f"{source} line {number}: bad volunteer name {name!r} (letters, digits, _.@- ; <= 64)")
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise UserError(f"{source} line {number}: {name}'s key hash is not 64 hex digits")
        if name in entries:
            raise UserError(f"{source} line {number}: {name} is listed twice")
        entries[name] = AllowlistEntry(name, digest, fields[2].strip() if len(fields) == 3 else "")
    return entries


def format_allowlist(entries: dict[str, AllowlistEntry]) -> str:
    return HEADER + "".join(f"{e.name}\t{e.sha256}\t{e.added}\n" for e in entries.values())


class Allowlist:
    """The allowlist file, re-read when it changes on disk. ``check`` answers token requests."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(
                f"allowlist file not found: {self.path} (create it with `python -m coordinator allowlist add`)"
            )
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, AllowlistEntry] = {}
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> bool:
        """Re-reads the file; returns whether it changed. ``strict``: raise on a bad file instead of keeping the old
        list (at start, where there is no old list)."""
        try:
            stat = self.path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return False
            entries = parse_allowlist(self.path.read_text(), str(self.path))
        except (OSError, UserError) as e:
            if strict:
                raise UserError(str(e)) from None
            logger.error("allowlist not reloaded, keeping the previous %d names: %s", len(self._entries), e)
            return False
        self._stamp, self._entries = stamp, entries
        logger.info("allowlist %s: %d volunteers", self.path, len(entries))
        return True

    def names(self) -> list[str]:
        self.reload()
        return sorted(self._entries)

    def grants(self) -> dict[str, str]:
        """Each listed name's grant: the hash of its secret (re-adding a name issues a new one)."""
        self.reload()
        return {name: entry.sha256 for name, entry in self._entries.items()}

    def check(self, name: str, secret: str) -> bool:
        """Whether ``name`` is listed with this secret (constant-time comparison of the hashes)."""
        self.reload()
        entry = self._entries.get(name)
        expected = entry.sha256 if entry is not None else secret_hash("")  # compare anyway: same time either way
        return hmac.compare_digest(expected, secret_hash(secret)) and entry is not None


# ---------------------------------------------------------------------------------------------------------------
# Editing the file (``python -m coordinator allowlist``)
# ---------------------------------------------------------------------------------------------------------------


def _read_entries(path: Path) -> dict[str, AllowlistEntry]:
    return parse_allowlist(path.read_text(), str(path)) if path.is_file() else {}


def _write_entries(path: Path, entries: dict[str, AllowlistEntry]) -> None:
    """Atomic replace, so a coordinator reading the file mid-write sees the old list or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(format_allowlist(entries))
    tmp.chmod(0o600)
    os.replace(tmp, path)


def add_volunteer(path: str | Path, name: str) -> str:
    """Adds ``name`` with a new random secret and returns the secret (the only time it exists in clear)."""
    path = Path(path)
    if not NAME_RE.fullmatch(name):
        raise UserError(f"bad volunteer name {name!r}: letters, digits and _.@- only, at most 64 characters")
    entries = _read_entries(path)
    if name in entries:
        raise UserError(f"{name} is already in {path}; remove it first to issue a new key")
    secret = secrets.token_urlsafe(32)
    added = datetime.now(UTC).replace(microsecond=0).isoformat()
    entries[name] = AllowlistEntry(name, secret_hash(secret), added)
    _write_entries(path, entries)
    return secret


def remove_volunteer(path: str | Path, name: str) -> None:
    path = Path(path)
    entries = _read_entries(path)
    if name not in entries:
        raise UserError(f"{name} is not in {path}")
    del entries[name]
    _write_entries(path, entries)


def list_volunteers(path: str | Path) -> list[AllowlistEntry]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"allowlist file not found: {path}")
    return list(_read_entries(path).values())


# ---------------------------------------------------------------------------------------------------------------
# Issuing tokens
# ---------------------------------------------------------------------------------------------------------------
