"""Function-preserving growth of a small pretrained model into the run's larger ELECTRA (the warm start).

Pure functions on fp64 state dicts and HF configs; no training code. ``resolve_source`` names a source, ``grow``
builds the grown pair, ``peer.growth.artifact`` writes it as the run's checkpoint 0.
"""

from peer.growth.grow import GrowthResult, grow, grow_discriminator_state
from peer.growth.source import DEFAULT_SOURCE, SourceModel, load_source, resolve_source

__all__ = [
    "DEFAULT_SOURCE",
    "GrowthResult",
    "SourceModel",
    "grow",
    "grow_discriminator_state",
    "load_source",
    "resolve_source",
]
