"""Depth growth by reusing source blocks: which source block each target block copies.

Post-LN transformers have no exact identity block (a zero-initialised residual branch still passes through the
LayerNorm, ~0.35 relative error), so depth growth is not function-preserving; we take the layers the literature found
to work and measure the change we cause (``peer.growth.verify``):
- ``stack`` (StackBERT / bert2BERT / G_stack): repeat the whole stack, then fill the remainder from the top,
  e.g. 6 → 8: [0..5, 4, 5]; 6 → 12: [0..5, 0..5].
- ``interleave``: each block repeated in place, e.g. 6 → 12: [0, 0, 1, 1, …, 5, 5].
"""

from __future__ import annotations

from peer.errors import UserError


def depth_map(n_src: int, n_tgt: int, method: str) -> list[int]:
    """Source block index for each of the ``n_tgt`` target blocks."""
    if n_tgt < n_src:
        raise UserError(f"target has {n_tgt} layers, fewer than the source's {n_src}")
    if method == "stack":
        full, rest = divmod(n_tgt, n_src)
        return list(range(n_src)) * full + list(range(n_src - rest, n_src))
    if method == "interleave":
        return [i * n_src // n_tgt for i in range(n_tgt)]
    raise UserError(f"unknown depth method {method!r} (known: stack, interleave)")
