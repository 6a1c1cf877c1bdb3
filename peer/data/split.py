"""The held-out split, decided per document by a stable hash of its text.

Why a hash and not an index: a streamed corpus has no stable indices across shard orders, peers and restarts, while a
document's text is the same everywhere, so every peer and the coordinator agree on the split forever, without
coordination, and duplicated documents land on the same side.
"""

from __future__ import annotations

import hashlib

_SCALE = float(2**64)


def heldout_score(text: str) -> float:
    """A uniform number in [0, 1) that depends only on the document's text."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def is_heldout(text: str, fraction: float) -> bool:
    return heldout_score(text) < fraction
