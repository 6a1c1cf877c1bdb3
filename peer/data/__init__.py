"""The data pipeline: documents from a hub dataset, local files or the embedded corpus -> fixed-length batches."""

from peer.data.pipeline import build_heldout_batches, build_train_batches, check_seq_len
from peer.data.shuffle import seed_from_bytes

__all__ = ["build_heldout_batches", "build_train_batches", "check_seq_len", "seed_from_bytes"]
