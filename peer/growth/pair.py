"""The ELECTRA generator that goes with a grown discriminator.

Its word/position/token-type embeddings and embedding LayerNorm ARE the discriminator's (tied, as in ELECTRA), so
only its blocks, its E→hidden projection and its MLM head are initialised here. Two choices (``GrowthSpec.
generator_init``):
- ``narrow`` (default): the source narrowed to the generator's width: the first source heads whole, the first FFN
  units and the first residual dims of every block (depth mapped like the discriminator). Why: the generator must
  become a decent MLM quickly or the discriminator's task is trivial early on; the source's attention patterns and
  FFN features are a better start than noise, and a narrowed copy is the only pretrained init that fits ¼–⅓ of the
  width. It is not function-preserving (LayerNorm statistics over a slice differ) and needs not be: the source has
  no MLM head to preserve. The projection reads the tied E space averaged over its copies and the MLM head is built
  at source E width then expanded, with 1/k folded into its LayerNorm so the tied decoder does not multiply the
  logits by k; both keep the generator symmetric in the discriminator's duplicated embedding dims, so the generator
  does not break the discriminator's symmetry by itself.
  The source has no MLM head, so the head is built to be both harmless at step 0 and as quick to learn as a fresh
  one. Its dense layer is the lens back into the tied E space: the pseudo-inverse of the source's E→hidden projection
  (the identity for a BERT source, which has none) restricted to the generator's residual dims, so the head reads the
  embedding space the generator's residual was projected from. Its LayerNorm gain is ``HEAD_GAIN`` = 1, HF's init
  and random init's (÷ copies, as above). Why not smaller: the logits are gain × LN output · tied word embeddings, so
  a head's (and the tied embeddings') updates move the logits in proportion to the gain, and Adam moves the gain
  itself by only ~lr per step. The earlier gain 0.1 kept the step-0 loss just below uniform but made the generator
  learn ~10x slower than random init's: on MiniLM → 768×6 it stalled at 9.73 held-out nats after 50 steps where
  random init reached 8.05. Why not a random dense with gain 1: unit-variance LayerNorm outputs of a random map
  dotted with trained word embeddings give confidently wrong logits (11.5 nats on MiniLM, uniform is 10.33); through
  the lens the step-0 loss stays within ~0.5 nats of uniform (10.1–10.9 held-out on MiniLM → 768×6, where random
  init starts at 10.4), repaid within ~10 steps (``tests/peer/growth/test_generator_head.py``, bench/README.md).
- ``fresh``: Hugging Face's random init (seeded), for comparison.
"""

from __future__ import annotations

import torch

from peer.growth.layout import PROJECTION, Dims
from peer.growth.width import (
    GrownState,
    WidthMaps,
    duplicate_index,
    expand_linear,
    grow_block,
    select_index,
    source_projection,
)

GEN_HEAD = "generator_predictions"
# LayerNorm gain of the MLM head per source E dim (HF's init; see the module docstring for why not smaller).
HEAD_GAIN = 1.0


def generator_dims(disc: Dims, hidden: int, heads: int, ffn: int) -> Dims:
    return Dims(
        hidden=hidden, heads=heads, head_dim=hidden // heads, ffn=ffn, embedding=disc.embedding, layers=disc.layers
    )


def narrow_generator_state(
    state: dict,
    src: Dims,
    gen: Dims,
    embedding_map: torch.Tensor,
    layer_map: list[int],
    vocab_size: int,
    rng: torch.Generator,
) -> GrownState:
    """Generator weights (without the tied embeddings) in canonical names plus the MLM head; fp64."""
    maps = WidthMaps(
        hidden=select_index(src.hidden, gen.hidden),
        embedding=embedding_map,
        ffn=select_index(src.ffn, gen.ffn),
        heads=select_index(src.heads, gen.heads),
        head_dims=duplicate_index(src.head_dim, gen.head_dim, "generator head size", even=False, rng=rng),
        src=src,
        tgt=gen,
    )
    out = GrownState(state={})
    for t, s in enumerate(layer_map):
        grow_block(state, out, s, t, maps)
    if gen.has_projection:
        w, b = source_projection(state, src)
        expand_linear(out, PROJECTION, w, b, maps.hidden, embedding_map)
    # MLM head at source E width, expanded to the tied E space (see the module docstring for the init).
    w, _ = source_projection(state, src)  # [src.hidden, src.E]
    dense = torch.linalg.pinv(w)[:, maps.hidden]  # [src.E, gen.hidden]
    expand_linear(
        out,
        f"{GEN_HEAD}.dense",
        dense,
        torch.zeros(src.embedding, dtype=torch.float64),
        embedding_map,
        torch.arange(gen.hidden),
    )
    counts = torch.bincount(embedding_map, minlength=src.embedding).to(torch.float64)[embedding_map]
    out.state[f"{GEN_HEAD}.LayerNorm.weight"] = HEAD_GAIN / counts
    out.state[f"{GEN_HEAD}.LayerNorm.bias"] = torch.zeros(gen.embedding, dtype=torch.float64)
    out.state["generator_lm_head.bias"] = torch.zeros(vocab_size, dtype=torch.float64)
    return out
