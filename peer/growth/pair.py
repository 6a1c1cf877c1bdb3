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
  The source has no MLM head, so the fresh head must not make the step-0 loss worse than a uniform guess (ln V):
  HF's init (N(0, 0.02) dense, LayerNorm gain 1) gave 11.5 nats on MiniLM where uniform is 10.33, because
  unit-variance LayerNorm outputs dotted with trained word embeddings give confidently wrong logits. So the head's
  LayerNorm gain starts at ``HEAD_GAIN`` (0.1): logits start near uniform and the head's gradient is not zero. When
  the source has no projection (E == hidden), the generator's residual dims are source embedding dims, so the dense
  layer starts as the identity into those dims: the head reads the token embedding the residual stream carries,
  which puts the step-0 loss just below uniform (``tests/peer/growth`` checks it is below ln V).
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
# LayerNorm gain of the fresh MLM head: logits start near uniform (see the module docstring).
HEAD_GAIN = 0.1


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
    dense = torch.randn(src.embedding, gen.hidden, generator=rng, dtype=torch.float64) * 0.02
    if f"{PROJECTION}.weight" not in state:  # E == hidden and no projection: residual dims are embedding dims
        dense = torch.zeros_like(dense)
        dense[maps.hidden, torch.arange(gen.hidden)] = 1.0
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
