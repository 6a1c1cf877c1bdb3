"""``grow``: a source model → the run's ELECTRA pair or ALBERT, function-preserving in width, stacked in depth, seeded.

The pure part (``grow_discriminator_state``) maps fp64 state dicts; ``grow`` wraps it with the HF configs and modules
that ``peer.modeling`` defines, so the result saves and loads like any other model dir of the run.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining
from transformers.initialization import no_init_weights

from peer.config import GrowthSpec, ModelSpec
from peer.errors import UserError
from peer.growth.albert import albert_growth, load_albert
from peer.growth.depth import depth_map
from peer.growth.layout import DISC_HEAD, Dims, backbone_only, dims_from_hf_config
from peer.growth.noise import add_symmetric_noise
from peer.growth.pair import GEN_HEAD, generator_dims, narrow_generator_state
from peer.growth.source import SourceModel
from peer.growth.width import GrownState, grow_block, grow_disc_head, grow_embeddings, width_maps
from peer.modeling import PretrainingModels, electra_configs, generator_sizes, tie_generator_embeddings

logger = logging.getLogger(__name__)

WIDTH_METHODS = {"exact": "exact (HyperCloning, even duplication)", "fpi": "fpi (bert2BERT, approximate)"}


def target_dims(spec: ModelSpec) -> Dims:
    if spec.hidden_size % spec.num_heads:
        raise UserError(f"target hidden_size {spec.hidden_size} is not divisible by num_heads {spec.num_heads}")
    return Dims(
        hidden=spec.hidden_size,
        heads=spec.num_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        ffn=spec.ffn_size,
        embedding=spec.embedding_size or spec.hidden_size,
        layers=spec.num_layers,
    )


def source_disc_head(state: dict, src: Dims, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """The source's ELECTRA discriminator head, or a fresh one drawn at SOURCE width (HF init, seeded) when the
    source has none (BERT). Drawing it small and growing it keeps the grown head exact and symmetric in the copies,
    and lets tests compare step-0 losses of source and target."""
    if f"{DISC_HEAD}.dense.weight" in state:
        return {k: v for k, v in state.items() if k.startswith(DISC_HEAD)}
    h = src.hidden
    return {
        f"{DISC_HEAD}.dense.weight": torch.randn(h, h, generator=rng, dtype=torch.float64) * 0.02,
        f"{DISC_HEAD}.dense.bias": torch.zeros(h, dtype=torch.float64),
        f"{DISC_HEAD}.dense_prediction.weight": torch.randn(1, h, generator=rng, dtype=torch.float64) * 0.02,
        f"{DISC_HEAD}.dense_prediction.bias": torch.zeros(1, dtype=torch.float64),
    }


@dataclass
class DiscriminatorGrowth:
    grown: GrownState
    hidden_index: torch.Tensor  # target residual unit -> source unit
    embedding_index: torch.Tensor
    layer_map: list[int]
    source_head: dict[str, torch.Tensor]


def grow_discriminator_state(
    source_state: dict,
    src: Dims,
    tgt: Dims,
    *,
    width_method: str,
    depth_method: str,
    seed: int,
    noise: float,
    max_positions: int | None = None,
) -> DiscriminatorGrowth:
    """The pure growth: fp64 source state (canonical names) → fp64 target discriminator state (canonical names,
    head included) with ``max_positions`` position rows (None: the source's count; see ``grow_embeddings``). Same
    arguments → same tensors, bit for bit (one seeded generator, fixed draw order)."""
    if width_method not in WIDTH_METHODS:
        raise UserError(f"unknown width method {width_method!r} (known: {', '.join(WIDTH_METHODS)})")
    rng = torch.Generator().manual_seed(seed)
    state = backbone_only(source_state)
    head = source_disc_head(state, src, rng)
    maps = width_maps(src, tgt, exact=width_method == "exact", rng=rng)
    layers = depth_map(src.layers, tgt.layers, depth_method)
    out = GrownState(state={})
    positions = state["embeddings.position_embeddings.weight"].shape[0] if max_positions is None else max_positions
    grow_embeddings(state, out, maps, max_positions=positions)
    for t, s in enumerate(layers):
        grow_block(state, out, s, t, maps)
    grow_disc_head(head, out, maps)
    add_symmetric_noise(out, noise, rng)
    return DiscriminatorGrowth(out, maps.hidden, maps.embedding, layers, head)


@dataclass
class GrowthResult:
    """The grown pair, the source as an ELECTRA discriminator of source width carrying the same head (what
    preservation is measured against), the target→source residual map, and a JSON-able record of what was done."""

    models: PretrainingModels
    source_discriminator: nn.Module
    hidden_index: torch.Tensor
    record: dict


def _with_prefix(state: dict, heads: tuple[str, ...]) -> dict:
    return {(k if k.startswith(heads) else f"electra.{k}"): v for k, v in state.items()}


@contextmanager
def _empty_modules(dtype: torch.dtype):
    """Builds HF modules directly in ``dtype`` without their random init (every weight is overwritten by growth);
    that init and a later dtype cast dominate the cost of growing otherwise."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(old)


def _load(module: nn.Module, state: dict, dtype: torch.dtype) -> nn.Module:
    module.to(dtype)
    missing, unexpected = module.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    missing = [k for k in missing if k != "generator_lm_head.weight"]  # tied to the word embeddings
    if missing or unexpected:
        raise RuntimeError(f"growth produced a state that does not match the model: {missing=} {unexpected=}")
    return module.eval()


def source_electra_config(source: SourceModel, src: Dims) -> ElectraConfig:
    c = source.config
    return ElectraConfig(
        vocab_size=c["vocab_size"],
        embedding_size=src.embedding,
        hidden_size=src.hidden,
        num_hidden_layers=src.layers,
        num_attention_heads=src.heads,
        intermediate_size=src.ffn,
        max_position_embeddings=c.get("max_position_embeddings", 512),
        type_vocab_size=c.get("type_vocab_size", 2),
        pad_token_id=c.get("pad_token_id", 0),
        hidden_act=c.get("hidden_act", "gelu"),
        layer_norm_eps=c.get("layer_norm_eps", 1e-12),
    )


def grow(
    source: SourceModel,
    spec: ModelSpec,
    growth: GrowthSpec,
    *,
    dtype: torch.dtype = torch.float32,
    keep_source_depth: bool = False,
) -> GrowthResult:
    """Grows ``source`` into the model ``spec`` describes (the ELECTRA pair, or ALBERT); weights cast to ``dtype``
    only at the end. ``keep_source_depth`` grows width only and keeps the source's layer structure: the exact
    reference that the depth change (stacking, ALBERT's shared layer) is measured against."""
    if spec.architecture == "albert":
        return _grow_albert(source, spec, growth, dtype, keep_source_depth)
    if spec.architecture != "electra":
        raise UserError(f"growing into {spec.architecture!r} is not supported (supported targets: electra, albert)")
    src = dims_from_hf_config(source.config)
    if keep_source_depth:
        spec = dataclasses.replace(spec, num_layers=src.layers)
    tgt = target_dims(spec)
    vocab = int(source.config["vocab_size"])
    disc = grow_discriminator_state(
        source.state,
        src,
        tgt,
        width_method=growth.width_method,
        depth_method=growth.depth_method,
        seed=growth.seed,
        noise=growth.noise,
        max_positions=spec.max_position_embeddings,  # the configs below are built with the spec's count
    )
    disc_cfg, gen_cfg = electra_configs(
        spec, vocab, int(source.config.get("pad_token_id") or 0), int(source.config.get("type_vocab_size", 2))
    )
    for cfg in (disc_cfg, gen_cfg):
        cfg.hidden_act = source.config.get("hidden_act", "gelu")
        cfg.layer_norm_eps = source.config.get("layer_norm_eps", 1e-12)
    with _empty_modules(dtype):
        discriminator = _load(ElectraForPreTraining(disc_cfg), _with_prefix(disc.grown.state, (DISC_HEAD,)), dtype)
        source_disc = ElectraForPreTraining(source_electra_config(source, src))
        if growth.generator_init == "narrow":
            generator = ElectraForMaskedLM(gen_cfg)
    if growth.generator_init == "fresh":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(growth.seed)
            generator = ElectraForMaskedLM(gen_cfg).to(dtype).eval()
    if growth.generator_init == "narrow":
        g_hidden, g_heads, g_ffn = generator_sizes(spec)
        gen_state = narrow_generator_state(
            backbone_only(source.state),
            src,
            generator_dims(tgt, g_hidden, g_heads, g_ffn),
            disc.embedding_index,
            disc.layer_map,
            vocab,
            torch.Generator().manual_seed(growth.seed + 1),
        )
        shared = {k: v for k, v in disc.grown.state.items() if k.startswith("embeddings.")}
        _load(generator, _with_prefix({**gen_state.state, **shared}, (GEN_HEAD, "generator_lm_head")), dtype)
    elif growth.generator_init != "fresh":
        raise UserError(f"unknown generator init {growth.generator_init!r} (known: narrow, fresh)")
    tie_generator_embeddings(generator, discriminator)

    _load(source_disc, _with_prefix({**backbone_only(source.state), **disc.source_head}, (DISC_HEAD,)), dtype)
    record = {
        "source": str(source.path),
        "source_model_type": source.model_type,
        "source_dims": vars(src),
        "target_dims": vars(tgt),
        "target_architecture": "electra",
        "width_method": WIDTH_METHODS[growth.width_method],
        "depth_method": growth.depth_method,
        "layer_map": disc.layer_map,
        "generator_init": growth.generator_init,
        "seed": growth.seed,
        "noise": growth.noise,
    }
    return GrowthResult(PretrainingModels(discriminator, generator), source_disc, disc.hidden_index, record)


def albert_target_dims(spec: ModelSpec, src: Dims) -> Dims:
    """ALBERT keeps the source's E unless the spec names one (``albert_config``'s default of 128 would be narrower
    than most sources' E, and E cannot shrink function-preservingly)."""
    return dataclasses.replace(target_dims(spec), embedding=spec.embedding_size or src.embedding)


def _grow_albert(
    source: SourceModel, spec: ModelSpec, growth: GrowthSpec, dtype: torch.dtype, keep_source_depth: bool
) -> GrowthResult:
    src = dims_from_hf_config(source.config)
    tgt = albert_target_dims(spec, src)
    tgt_state, tgt_cfg, ref_state, ref_cfg, maps, shape = albert_growth(
        source, spec, growth, src, tgt, keep_source_depth=keep_source_depth
    )
    with _empty_modules(dtype):
        model = load_albert(tgt_cfg, tgt_state, dtype)
        reference = load_albert(ref_cfg, ref_state, dtype)
    record = {
        "source": str(source.path),
        "source_model_type": source.model_type,
        "source_dims": vars(src),
        "target_dims": {**vars(tgt), "layers": shape.num_layers},
        "target_architecture": "albert",
        "width_method": WIDTH_METHODS[growth.width_method],
        "depth_method": "albert shared layer (num_hidden_layers)",
        # Source layer copied by each target layer group ("mean": the mean of the source's layers).
        "layer_map": ["mean" if s == src.layers else s for s in shape.group_sources],
        "num_hidden_layers": shape.num_layers,
        "seed": growth.seed,
        "noise": growth.noise,
    }
    return GrowthResult(PretrainingModels(model), reference, maps.hidden, record)
