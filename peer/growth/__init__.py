"""Function-preserving growth of a small pretrained model into the run's larger ELECTRA/ALBERT (the warm start).

Pure functions on fp64 state dicts and HF configs; no training code. See ``grow`` for the entry point and
``resolve_source`` for naming a source.
"""

from peer.growth.source import DEFAULT_SOURCE, SourceModel, load_source, resolve_source

__all__ = ["DEFAULT_SOURCE", "SourceModel", "load_source", "resolve_source"]
