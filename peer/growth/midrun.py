"""Mid-run growth: the ELECTRA pair of one schedule stage → the next stage's pair, on the pair's named parameters.

The state is what ``PretrainingModels.named_parameters`` names (``discriminator.electra.…``, ``generator.…``; the
tied embeddings once, under the discriminator), so the same names key the parameters, their optimizer state
(``peer.growth.optimizer_state``) and, later, the swarm's state. Two steps, kept apart because they are different
kinds of map:

- ``grow_pair_width``: exact duplication (``peer.growth.width``) of every width, layers kept. Linear in the state,
  every target element a multiple of one source element, and function-preserving: with integer factors (what
  ``peer.config.model_stages`` allows) the grown pair computes the small pair's losses exactly. The generator is
  grown with the same rules as the discriminator (its E space is the discriminator's, tied); its MLM head's
  LayerNorm is divided by the E copies so the tied decoder (word embeddings repeated without 1/k) does not
  multiply the logits by k.
- ``stack_layers``: depth by copying whole blocks (``peer.growth.depth.depth_map``), not function-preserving.

Noise is not added here: mid-run growth keeps copies identical; breaking the symmetry is ``peer.growth.noise``'s job
and a separate decision (dropout breaks it too).
"""

from __future__ import annotations

import dataclasses
import re
from functools import partial

import torch
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.initialization import no_init_weights

from peer.config import ModelSpec
from peer.errors import UserError
from peer.growth.depth import depth_map
from peer.growth.grow import grow_discriminator_state, target_dims
from peer.growth.layout import PROJECTION, Dims
from peer.growth.optimizer_state import grow_adam_state
from peer.growth.pair import GEN_HEAD, generator_dims
from peer.growth.width import GrownState, expand_linear, expand_norm, grow_block, width_maps
from peer.modeling import PretrainingModels, electra_configs, generator_sizes, tie_generator_embeddings

State = dict[str, torch.Tensor]
DISC, GEN = "discriminator.", "generator."
_LAYER = re.compile(r"^((?:discriminator|generator)\.electra\.encoder\.layer\.)(\d+)(\..*)$")


def pair_dims(spec: ModelSpec) -> tuple[Dims, Dims]:
    """(discriminator, generator) widths of a stage."""
    disc = target_dims(spec)
    g_hidden, g_heads, g_ffn = generator_sizes(spec)
    return disc, generator_dims(disc, g_hidden, g_heads, g_ffn)


def _split(state: State, prefix: str, heads: tuple[str, ...]) -> State:
    """One model's part of the pair state in growth's canonical names (``electra.`` dropped, heads kept)."""
    out = {}
    for name, value in state.items():
        if not name.startswith(prefix):
            continue
        name = name[len(prefix) :]
        out[name if name.startswith(heads) else name.removeprefix("electra.")] = value
    return out


def _join(state: State, prefix: str, heads: tuple[str, ...]) -> State:
    return {(f"{prefix}{k}" if k.startswith(heads) else f"{prefix}electra.{k}"): v for k, v in state.items()}


def grow_generator_width(gen: State, src: Dims, tgt: Dims) -> State:
    """The generator's own tensors (canonical names, without the tied embeddings) grown from ``src`` to ``tgt``
    widths with its layers kept. Its E map is the discriminator's (both are ``arange % E_src``)."""
    maps = width_maps(src, tgt, exact=True, rng=torch.Generator())
    out = GrownState(state={})
    for layer in range(src.layers):
        grow_block(gen, out, layer, layer, maps)
    if tgt.has_projection:
        if f"{PROJECTION}.weight" not in gen:
            raise UserError("the grown generator needs an E→hidden projection the stage's generator does not have")
        w, b = gen[f"{PROJECTION}.weight"], gen[f"{PROJECTION}.bias"]
        expand_linear(out, PROJECTION, w, b, maps.hidden, maps.embedding)
    elif f"{PROJECTION}.weight" in gen:
        raise UserError("the grown generator would lose its E→hidden projection (E equal to its hidden size)")
    dense = f"{GEN_HEAD}.dense"
    expand_linear(out, dense, gen[f"{dense}.weight"], gen[f"{dense}.bias"], maps.embedding, maps.hidden)
    counts = torch.bincount(maps.embedding, minlength=src.embedding).to(gen[f"{dense}.weight"].dtype)
    expand_norm(out, f"{GEN_HEAD}.LayerNorm", gen, maps.embedding, scale=1 / counts[maps.embedding])
    out.state["generator_lm_head.bias"] = gen["generator_lm_head.bias"]
    return out.state


def grow_pair_width(state: State, old: ModelSpec, new: ModelSpec) -> State:
    """The pair state of stage ``old`` with every width grown to ``new``'s, layers kept (a linear map of ``state``;
    see the module docstring). fp64 in, fp64 out."""
    (d_src, g_src), (d_tgt, g_tgt) = pair_dims(old), pair_dims(dataclasses.replace(new, num_layers=old.num_layers))
    disc_heads, gen_heads = ("discriminator_predictions",), (GEN_HEAD, "generator_lm_head")
    disc = grow_discriminator_state(
        _split(state, DISC, disc_heads), d_src, d_tgt, width_method="exact", depth_method="stack", seed=0, noise=0.0
    )
    gen = grow_generator_width(_split(state, GEN, gen_heads), g_src, g_tgt)
    return {**_join(disc.grown.state, DISC, disc_heads), **_join(gen, GEN, gen_heads)}


def stack_layers(state: State, layer_map: list[int]) -> State:
    """``state`` with target block ``t`` of both models a copy of source block ``layer_map[t]`` (other tensors
    unchanged). Copies are new tensors, so a caller may update one block without touching its twin."""
    out = {name: value for name, value in state.items() if not _LAYER.match(name)}
    by_layer: dict[int, list[tuple[str, str, torch.Tensor]]] = {}
    for name, value in state.items():
        if m := _LAYER.match(name):
            by_layer.setdefault(int(m.group(2)), []).append((m.group(1), m.group(3), value))
    for t, s in enumerate(layer_map):
        for head, tail, value in by_layer[s]:
            out[f"{head}{t}{tail}"] = value.clone()
    return out


def stage_layer_map(old: ModelSpec, new: ModelSpec, depth_method: str) -> list[int]:
    return depth_map(old.num_layers, new.num_layers, depth_method)


def grow_pair_state(state: State, old: ModelSpec, new: ModelSpec, depth_method: str = "stack") -> State:
    """The next stage's pair state: widths grown exactly, then blocks stacked."""
    return stack_layers(grow_pair_width(state, old, new), stage_layer_map(old, new, depth_method))


def grow_stage(
    models: PretrainingModels, optimizer_state: dict[str, State], old: ModelSpec, new: ModelSpec, depth_method: str
) -> tuple[PretrainingModels, dict[str, State]]:
    """The switch from stage ``old`` to ``new`` of one trainer: new modules holding the grown parameters, and the
    grown optimizer state by parameter name (``peer.growth.optimizer_state``). Nothing is downloaded: every peer
    computes the same result from the same state."""
    params = pair_state(models)
    grown = build_grown_models(models, grow_pair_state(params, old, new, depth_method), new)
    width = partial(grow_pair_width, old=old, new=new)
    depth = partial(stack_layers, layer_map=stage_layer_map(old, new, depth_method))
    return grown, grow_adam_state(optimizer_state, params, width, depth)


def pair_state(models: PretrainingModels) -> State:
    """The pair's named parameters as detached fp64 CPU tensors: growth's precision, and its index maps are CPU
    tensors (``build_grown_models`` puts the result back on the models' device)."""
    return {name: p.detach().to("cpu", torch.float64) for name, p in models.named_parameters()}


def build_grown_models(models: PretrainingModels, state: State, new: ModelSpec) -> PretrainingModels:
    """New modules of stage ``new`` holding ``state`` (cast to the old models' dtype and device), with the old
    models' vocabulary, activation and LayerNorm epsilon, the generator's embeddings tied to the discriminator's."""
    old_cfg = models.discriminator.config
    disc_cfg, gen_cfg = electra_configs(new, old_cfg.vocab_size, old_cfg.pad_token_id, old_cfg.type_vocab_size)
    for cfg, like in ((disc_cfg, old_cfg), (gen_cfg, models.generator.config)):
        for key in ("hidden_act", "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            setattr(cfg, key, getattr(like, key))
    param = next(models.discriminator.parameters())
    grown = _empty_pair(disc_cfg, gen_cfg)
    names = dict(grown.named_parameters())
    if set(names) != set(state):
        raise RuntimeError(f"grown state does not match the stage's modules: {sorted(set(names) ^ set(state))[:4]}")
    with torch.no_grad():
        for name, p in names.items():
            p.data = state[name].to(dtype=param.dtype, device=param.device).clone()
    tie_generator_embeddings(grown.generator, grown.discriminator)
    return grown.train(models.discriminator.training)


def _empty_pair(disc_cfg: ElectraConfig, gen_cfg: ElectraConfig) -> PretrainingModels:
    with no_init_weights():
        disc, gen = ElectraForPreTraining(disc_cfg), ElectraForMaskedLM(gen_cfg)
    tie_generator_embeddings(gen, disc)
    return PretrainingModels(disc, gen)
