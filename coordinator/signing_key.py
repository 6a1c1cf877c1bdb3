"""The coordinator's RSA keys on disk (the DHT record-signing key, the token authority's key).

Its own module because both the service (which signs DHT records) and the token authority (``coordinator.auth``)
load one; hivemind is imported inside, as in ``coordinator.auth``, so that the ``allowlist`` commands stay quick."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from peer.errors import UserError

if TYPE_CHECKING:
    from hivemind.utils.crypto import RSAPrivateKey


def load_or_create_signing_key(path: Path) -> RSAPrivateKey:
    """The coordinator's RSA key for signed DHT records, kept across restarts so peers see the same signer."""
    from cryptography.hazmat.primitives import serialization
    from hivemind.utils.crypto import RSAPrivateKey

    key = RSAPrivateKey()
    if path.is_file():
        try:
            key._private_key = serialization.load_der_private_key(path.read_bytes(), password=None)
        except ValueError as e:
            raise UserError(f"signing key {path} is unreadable ({e}); move it away to create a new one") from None
        return key
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(key.to_bytes())
    tmp.chmod(0o600)
    tmp.replace(path)
    return key
