"""Sizes and parameter names of the transformer blocks that growth rewrites.

Growth works on one canonical naming, the ELECTRA backbone without its ``electra.`` prefix (``embeddings.*``,
``embeddings_project.*``, ``encoder.layer.{i}.*``), which is also BERT's: BERT and the ELECTRA discriminator have the
same blocks, so mapping BERT onto ELECTRA is dropping the pooler and the MLM head. An ALBERT source is read into the
same naming by unrolling its shared layer group(s) into ``num_hidden_layers`` blocks (``albert_to_canonical``), so
every source feeds every target. Heads keep one naming across sources too: the pooler as BERT's ``pooler.dense``, the
MLM head as ALBERT's ``predictions.*`` (BERT's ``cls.predictions.transform.*`` renamed). ``Dims`` is everything the
width maps need to know about one model.
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
# The same roles under ``encoder.albert_layer_groups.{g}.albert_layers.0.`` of an ALBERT model.
ALBERT_BLOCK = {
    "q": "attention.query",
    "k": "attention.key",
    "v": "attention.value",
    "o": "attention.dense",
    "ln_attn": "attention.LayerNorm",
    "ffn_in": "ffn",
    "ffn_out": "ffn_output",
    "ln_ffn": "full_layer_layer_norm",
}
ALBERT_PROJECTION = "encoder.embedding_hidden_mapping_in"
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


def albert_group_key(group: int, role: str, param: str) -> str:
    return f"encoder.albert_layer_groups.{group}.albert_layers.0.{ALBERT_BLOCK[role]}.{param}"


def albert_group_of_layer(layer: int, num_layers: int, num_groups: int) -> int:
    """The layer group HF's ``AlbertTransformer`` applies as layer ``layer`` (its own formula, float division
    included, so the unrolled source computes exactly what the ALBERT model does)."""
    return int(layer / (num_layers / num_groups))


def albert_to_canonical(state: dict, config: dict) -> dict:
    """An ALBERT state (``albert.`` prefix stripped) in canonical names: the projection as ``embeddings_project``,
    group ``albert_group_of_layer(i)`` as ``encoder.layer.{i}`` for every applied layer i (the same tensors repeated),
    ``pooler`` as ``pooler.dense``; everything else (embeddings, ``predictions.*``, ``sop_classifier.*``) unchanged."""
    from peer.errors import UserError

    if int(config.get("inner_group_num", 1)) != 1:
        raise UserError(f"ALBERT sources with inner_group_num={config['inner_group_num']} are not supported (only 1)")
    layers, groups = int(config["num_hidden_layers"]), int(config.get("num_hidden_groups", 1))
    out = {k: v for k, v in state.items() if not k.startswith(("encoder.", "pooler."))}
    for param in ("weight", "bias"):
        out[f"{PROJECTION}.{param}"] = state[f"{ALBERT_PROJECTION}.{param}"]
        if f"pooler.{param}" in state:
            out[f"pooler.dense.{param}"] = state[f"pooler.{param}"]
        for i in range(layers):
            g = albert_group_of_layer(i, layers, groups)
            for role in BLOCK:
                out[layer_key(i, role, param)] = state[albert_group_key(g, role, param)]
    return out


def bert_mlm_head_to_canonical(state: dict) -> dict:
    """BERT's MLM head (``cls.predictions.*``) under ALBERT's names; the decoder is tied to the word embeddings."""
    renames = {"cls.predictions.transform.dense.": "predictions.dense.", "cls.predictions.transform.LayerNorm.":
               "predictions.LayerNorm.", "cls.predictions.bias": "predictions.bias"}  # fmt: skip
    out = {}
    for k, v in state.items():
        for old, new in renames.items():
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        out[k] = v
    return out


def backbone_only(state: dict) -> dict:
    """The ELECTRA-discriminator view of a BERT/ELECTRA source: drops BERT's pooler and MLM head and an ELECTRA
    generator's MLM head (the discriminator has neither), keeps the backbone and a discriminator head if present."""
    drop = ("pooler.", "cls.", "predictions.", "sop_classifier.", "generator_predictions.", "generator_lm_head.")
    return {k: v for k, v in state.items() if not k.startswith(drop)}
