"""Growth into an ALBERT target (``objective: albert``): one shared layer, factorised embeddings, MLM + SOP heads.

Width is grown exactly as for ELECTRA (``peer.growth.width``): E is kept and the projection
``embedding_hidden_mapping_in`` gets its rows expanded (from a BERT source, E == hidden and no projection, it is
created as ``[I; …; I]`` with b = 0). Heads: the pooler reads and writes hidden (both sides expanded), the SOP
classifier reads hidden (``/k``), the MLM head reads hidden and writes E, and its decoder is tied to the word
embeddings, so when E itself grows the ``1/k`` is folded into the head's LayerNorm (as for the ELECTRA generator).

Depth: ALBERT applies its one layer group ``num_hidden_layers`` times, so growing depth is raising that count.
The target's shared layer copies the source's shared layer (ALBERT: exact) or the mean of a BERT source's layers
(see the comment above ``shared_shape``: a depth/sharing change, measured and recorded like stacking).
``keep_source_depth`` builds the width-only reference instead: as many layer groups as the source has distinct
layers, applied the source's number of times, which is exactly the source function.

Heads the source lacks (BERT has no SOP head, MiniLM no MLM head) are drawn at SOURCE width from the seeded
generator and grown, so the grown model still computes what the source (with those heads) computes. A fresh MLM
head starts near uniform (``peer.growth.pair`` explains the gain and the lens dense).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from transformers import AlbertConfig, AlbertForPreTraining

from peer.config import GrowthSpec, ModelSpec
from peer.errors import UserError
from peer.growth.layout import (
    ALBERT_PROJECTION,
    BLOCK,
    PROJECTION,
    Dims,
    albert_group_key,
    albert_group_of_layer,
    layer_key,
)
from peer.growth.noise import add_symmetric_noise
from peer.growth.pair import HEAD_GAIN
from peer.growth.source import SourceModel
from peer.growth.width import (
    GrownState,
    WidthMaps,
    expand_linear,
    grow_block,
    grow_embeddings,
    source_projection,
    width_maps,
)
from peer.modeling import albert_config

HEAD_PREFIXES = ("pooler.", "predictions.", "sop_classifier.")


@dataclass
class AlbertShape:
    """What an ALBERT target looks like beyond ``Dims``: how many distinct layer groups, which canonical source layer
    each copies, and how many times the groups are applied (``num_hidden_layers``)."""

    group_sources: list[int]
    num_layers: int


def source_shape(source: SourceModel, layers: int) -> AlbertShape:
    """The width-only reference: the source's own layer structure (ALBERT: its groups; BERT/ELECTRA: one group per
    layer), so the grown model computes exactly the source's function."""
    groups = int(source.config.get("num_hidden_groups", 1)) if source.model_type == "albert" else layers
    first = {}
    for i in range(layers):
        first.setdefault(albert_group_of_layer(i, layers, groups), i)
    return AlbertShape([first[g] for g in range(groups)], layers)


# A BERT source has several distinct layers and ALBERT one shared layer: no choice preserves the function. Measured
# on MiniLM (384 wide, shared layer applied 6 times vs the 6-layer source, fp64, probe batch; final hidden / MLM
# logits rel. L2): copying layer 0..5 gives 1.60/1.38, 1.37/1.19, 1.64/1.33, 1.49/1.20, 1.46/1.26, 1.69/1.42; the
# mean of the 6 layers' weights 1.39/1.10. We take the mean: the lowest logits change, close to the lowest hidden
# change, and a rule that does not depend on one source. An ALBERT source's layers are one shared layer: copied.
def shared_shape(source: SourceModel, source_layers: int, num_layers: int) -> AlbertShape:
    """One shared group applied ``num_layers`` times; it copies the source's shared layer (ALBERT, one group) or
    the mean of its layers (see the comment above)."""
    if num_layers < source_layers:
        raise UserError(f"target has {num_layers} layers, fewer than the source's {source_layers}")
    if source_shape(source, source_layers).group_sources == [0]:
        return AlbertShape([0], num_layers)
    return AlbertShape([source_layers], num_layers)  # index of the appended mean layer (``with_mean_layer``)


def with_mean_layer(state: dict, source_layers: int) -> dict:
    """``state`` plus a canonical layer ``source_layers`` whose weights are the mean of the source's layers."""
    out = dict(state)
    for role in BLOCK:
        for param in ("weight", "bias"):
            layers = [state[layer_key(i, role, param)] for i in range(source_layers)]
            out[layer_key(source_layers, role, param)] = torch.stack(layers).mean(0)
    return out


def source_albert_heads(state: dict, src: Dims, vocab: int, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """The pooler, SOP classifier and MLM head at source width: the source's own where it has them, else drawn
    (HF's N(0, 0.02) init; the MLM head as described in the module docstring), always in this draw order."""
    f64 = dict(dtype=torch.float64)
    h, e = src.hidden, src.embedding
    heads = {k: v for k, v in state.items() if k.startswith(HEAD_PREFIXES)}
    drawn = {
        "pooler.dense.weight": torch.randn(h, h, generator=rng, **f64) * 0.02,
        "pooler.dense.bias": torch.zeros(h, **f64),
        "sop_classifier.classifier.weight": torch.randn(2, h, generator=rng, **f64) * 0.02,
        "sop_classifier.classifier.bias": torch.zeros(2, **f64),
        "predictions.dense.weight": torch.randn(e, h, generator=rng, **f64) * 0.02,  # drawn for the draw order only
        "predictions.dense.bias": torch.zeros(e, **f64),
        "predictions.LayerNorm.weight": torch.full((e,), HEAD_GAIN, **f64),
        "predictions.LayerNorm.bias": torch.zeros(e, **f64),
        "predictions.bias": torch.zeros(vocab, **f64),
    }
    # The lens back into E (``peer.growth.pair``): the identity for a source without a projection.
    drawn["predictions.dense.weight"] = torch.linalg.pinv(source_projection(state, src)[0])
    if "predictions.dense.weight" in heads:  # a trained MLM head is kept whole, never mixed with drawn parts
        drawn = {k: v for k, v in drawn.items() if not k.startswith("predictions.")}
    return {**drawn, **heads}


def grow_albert_heads(heads: dict, out: GrownState, maps: WidthMaps) -> None:
    h, e = maps.hidden, maps.embedding
    expand_linear(out, "pooler.dense", heads["pooler.dense.weight"], heads["pooler.dense.bias"], h, h)
    w, b = heads["sop_classifier.classifier.weight"], heads["sop_classifier.classifier.bias"]
    expand_linear(out, "sop_classifier.classifier", w, b, torch.arange(2), h)
    expand_linear(out, "predictions.dense", heads["predictions.dense.weight"], heads["predictions.dense.bias"], e, h)
    counts = torch.bincount(e, minlength=maps.src.embedding).to(torch.float64)[e]
    out.state["predictions.LayerNorm.weight"] = heads["predictions.LayerNorm.weight"][e] / counts
    out.state["predictions.LayerNorm.bias"] = heads["predictions.LayerNorm.bias"][e] / counts
    out.state["predictions.bias"] = heads["predictions.bias"]
    out.state["predictions.decoder.bias"] = heads["predictions.bias"]


def to_albert_names(state: dict, num_groups: int) -> dict:
    """Canonical grown names → ``AlbertForPreTraining`` names (layer ``g`` of the grown state is group ``g``)."""
    out = {}
    for name, tensor in state.items():
        if name.startswith("predictions.") or name.startswith("sop_classifier."):
            out[name] = tensor
        elif name.startswith("pooler.dense."):
            out[f"albert.pooler.{name.rsplit('.', 1)[1]}"] = tensor
        elif name.startswith(f"{PROJECTION}."):
            out[f"albert.{ALBERT_PROJECTION}.{name.rsplit('.', 1)[1]}"] = tensor
        elif name.startswith("embeddings."):
            out[f"albert.{name}"] = tensor
    for g in range(num_groups):
        for role in BLOCK:
            for param in ("weight", "bias"):
                out[f"albert.{albert_group_key(g, role, param)}"] = state[layer_key(g, role, param)]
    return out


def grow_albert_state(
    state: dict, heads: dict, src: Dims, tgt: Dims, shape: AlbertShape, *, exact: bool, noise: float, rng, positions
) -> tuple[dict, WidthMaps]:
    """The pure growth into ALBERT names (fp64); ``tgt.layers`` is ignored, ``shape`` says the depth."""
    maps = width_maps(src, tgt, exact=exact, rng=rng)
    out = GrownState(state={})
    grow_embeddings(state, out, maps, max_positions=positions, projection=True)
    for g, s in enumerate(shape.group_sources):
        grow_block(state, out, s, g, maps)
    grow_albert_heads(heads, out, maps)
    add_symmetric_noise(out, noise, rng)
    return to_albert_names(out.state, len(shape.group_sources)), maps


def albert_target_config(spec: ModelSpec, source: SourceModel, tgt: Dims, shape: AlbertShape) -> AlbertConfig:
    c = source.config
    sized = dataclasses.replace(spec, embedding_size=tgt.embedding, num_layers=shape.num_layers)
    cfg = albert_config(sized, int(c["vocab_size"]), int(c.get("pad_token_id") or 0), int(c.get("type_vocab_size", 2)))
    cfg.num_hidden_groups = len(shape.group_sources)
    cfg.hidden_act = c.get("hidden_act", "gelu")
    cfg.layer_norm_eps = c.get("layer_norm_eps", 1e-12)
    return cfg


def load_albert(cfg: AlbertConfig, state: dict, dtype: torch.dtype) -> AlbertForPreTraining:
    model = AlbertForPreTraining(cfg).to(dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k != "predictions.decoder.weight"]  # tied to the word embeddings
    if missing or unexpected:
        raise RuntimeError(f"growth produced a state that does not match ALBERT: {missing=} {unexpected=}")
    # Built without init (``no_init_weights``), the decoder is not tied yet: tie it as ``from_pretrained`` does.
    model.tie_weights()
    if model.predictions.decoder.weight is not model.albert.embeddings.word_embeddings.weight:
        raise RuntimeError("ALBERT's MLM decoder is not tied to the word embeddings")
    return model.eval()


def albert_growth(
    source: SourceModel, spec: ModelSpec, growth: GrowthSpec, src: Dims, tgt: Dims, *, keep_source_depth: bool
) -> tuple[dict, AlbertConfig, dict, AlbertConfig, WidthMaps, AlbertShape]:
    """(target state, target config, source-reference state, its config, width maps, target shape), all fp64.
    The source reference is the source as an ALBERT of its own width and depth carrying the same heads."""
    vocab = int(source.config["vocab_size"])
    rng = torch.Generator().manual_seed(growth.seed)
    heads = source_albert_heads(source.state, src, vocab, rng)
    reference = source_shape(source, src.layers)
    shape = reference if keep_source_depth else shared_shape(source, src.layers, spec.num_layers)
    positions = spec.max_position_embeddings
    state = with_mean_layer(source.state, src.layers) if shape.group_sources == [src.layers] else source.state
    tgt_state, maps = grow_albert_state(
        state, heads, src, tgt, shape, exact=growth.width_method == "exact", noise=growth.noise, rng=rng,
        positions=positions,
    )  # fmt: skip
    ref_state, _ = grow_albert_state(
        source.state, heads, src, src, reference, exact=True, noise=0.0, rng=None, positions=positions
    )
    ref_spec = dataclasses.replace(
        spec, hidden_size=src.hidden, num_heads=src.heads, ffn_size=src.ffn, embedding_size=src.embedding
    )
    return (
        tgt_state,
        albert_target_config(spec, source, tgt, shape),
        ref_state,
        albert_target_config(ref_spec, source, src, reference),
        maps,
        shape,
    )
