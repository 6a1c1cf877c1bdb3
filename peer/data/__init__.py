"""The data pipeline: documents from a hub dataset, local files or the embedded corpus -> fixed-length batches."""

from peer.data.pipeline import build_heldout_batches, build_train_batches, check_seq_len
from peer.data.prefetch import Prefetcher, prefetch
from peer.data.shuffle import seed_from_bytes

__all__ = [
    "Prefetcher",
    "build_heldout_batches",
    "build_train_batches",
    "check_seq_len",
    "prefetch",
    "seed_from_bytes",
]
