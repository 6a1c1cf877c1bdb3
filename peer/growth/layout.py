"""Sizes and parameter names of the transformer blocks that growth rewrites.

Growth works on one canonical naming, the ELECTRA backbone without its ``electra.`` prefix (``embeddings.*``,
``embeddings_project.*``, ``encoder.layer.{i}.*``), which is also BERT's: BERT and the ELECTRA discriminator have the
same blocks, so mapping BERT onto ELECTRA is dropping the pooler and the MLM head. ``Dims`` is everything the width
maps need to know about one model.
"""

from __future__ import annotations

from dataclasses import dataclass

from peer.errors import UserError

# Role of each linear/LayerNorm inside one encoder block -> its name under ``encoder.layer.{i}.``.
BLOCK = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "o": "attention.output.dense",
    "ln_attn": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ln_ffn": "output.LayerNorm",
}
EMBEDDING_TABLES = ("word_embeddings", "position_embeddings", "token_type_embeddings")
PROJECTION = "embeddings_project"
DISC_HEAD = "discriminator_predictions"


def layer_key(i: int, role: str, param: str) -> str:
    return f"encoder.layer.{i}.{BLOCK[role]}.{param}"


@dataclass(frozen=True)
class Dims:
    """Widths of one model: residual ``hidden``, ``heads`` × ``head_dim`` attention, ``ffn``, embedding ``embedding``
    (E; a projection E→hidden exists iff ``embedding != hidden``), and ``layers``."""

    hidden: int
    heads: int
    head_dim: int
    ffn: int
    embedding: int
    layers: int

    @property
    def has_projection(self) -> bool:
        return self.embedding != self.hidden


def dims_from_hf_config(config: dict) -> Dims:
    """Dims of a BERT/ELECTRA HF config dict (``embedding_size`` absent means E == hidden)."""
    try:
        hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        dims = Dims(
            hidden=hidden,
            heads=heads,
            head_dim=hidden // heads,
            ffn=int(config["intermediate_size"]),
            embedding=int(config.get("embedding_size") or hidden),
            layers=int(config["num_hidden_layers"]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"source config.json lacks a usable {e} field") from None
    if dims.heads * dims.head_dim != dims.hidden:
        raise UserError(f"source hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    return dims


def backbone_only(state: dict) -> dict:
    """The ELECTRA-discriminator view of a BERT/ELECTRA source: drops BERT's pooler and MLM head and an ELECTRA
    generator's MLM head (the discriminator has neither), keeps the backbone and a discriminator head if present."""
    drop = ("pooler.", "cls.", "generator_predictions.", "generator_lm_head.")
    return {k: v for k, v in state.items() if not k.startswith(drop)}
