"""The RSA key that signs a volunteer's DHT records, kept next to its libp2p identity file.

Why: the coordinator credits contribution to the key that signs a peer's ``<run_id>_metrics`` records (only its holder
can write under it: hivemind's ``RSASignatureValidator``), so a key made fresh by each process made every restart a
new volunteer with a second leaderboard row. With ``--identity_path`` the key lives in ``<identity_path>.records.der``
(PKCS#1 DER, mode 0600, created without ever being readable by others), so a volunteer keeps one row across
restarts, and nobody without that file can write under it: not even someone who knows the peer's libp2p id, which a
record carries too but which no row is keyed by, since anyone can write any id into a record. Without
``--identity_path`` a peer signs with a fresh key: a new volunteer each start.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.utils.crypto import RSAPrivateKey

from peer.errors import UserError

logger = logging.getLogger(__name__)

RECORD_KEY_SUFFIX = ".records.der"


def record_key_path(identity_path: str | os.PathLike) -> Path:
    """Where the record key of the peer with this identity file lives: beside it, under the same lock."""
    path = Path(identity_path)
    return path.with_name(path.name + RECORD_KEY_SUFFIX)


def load_or_create_record_key(path: Path) -> RSAPrivateKey:
    """The key in ``path``, or a new one written there first. UserError (one line) when the file is readable by
    others (as ssh refuses such a key: someone else may hold it) or holds no RSA private key."""
    if not path.exists():
        _create(path)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UserError(f"record key {path} is accessible by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")
    try:
        private = serialization.load_der_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise UserError(f"record key {path} is unreadable ({e}); move it away to sign as a new volunteer") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise UserError(f"record key {path} is not an RSA key; move it away to sign as a new volunteer")
    key = RSAPrivateKey.__new__(RSAPrivateKey)  # hivemind 1.1.12 has no loader; its __setstate__ does the same
    key._private_key = private
    return key


def _create(path: Path) -> None:
    """Writes a new key to ``path`` (mode 0600 from the first byte); if another process made one first, keeps it."""
    if not path.parent.is_dir():
        raise UserError(f"directory for --identity_path does not exist: {path.parent}")
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(RSAPrivateKey().to_bytes())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces a key that appeared meanwhile
        except FileExistsError:
            pass
        else:
            logger.info("new record signing key in %s", path)
    finally:
        tmp.unlink(missing_ok=True)


def use_as_process_key(key: RSAPrivateKey) -> None:
    """Makes ``key`` the one hivemind signs with by default in this process (``RSAPrivateKey.process_wide``,
    hivemind 1.1.12, which caches its key in ``_process_wide_key``).

    Why it must be that one: hivemind's own signed records (the optimizer's ``ProgressTracker``) use the process key,
    a DHT merges every ``RSASignatureValidator`` into the first one it was given, and a private run binds its access
    token to the process key (``peer.swarm.membership.authenticate_peer``). Call it before anything signs.
    RuntimeError when this process already signs with another key (its earlier records could not be moved to this
    one)."""
    with RSAPrivateKey._process_wide_key_lock:
        current = RSAPrivateKey._process_wide_key
        if current is not None and current.to_bytes() != key.to_bytes():
            raise RuntimeError("this process already signs DHT records with another RSA key")
        RSAPrivateKey._process_wide_key = key
