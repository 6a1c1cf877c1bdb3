"""The pretraining models as plain Hugging Face modules: built from a ``ModelSpec``, saved and loaded as HF dirs.

Why HF modules and not our own: every checkpoint the swarm produces must load with ``from_pretrained`` in plain
``transformers``, and the growth code maps weights by HF parameter names. Speed-ups (masked-only vocabulary
projection, SDPA) live in the objectives, which call into these modules' parts.

On-disk layout of a model dir (what ``peer grow`` writes and the coordinator checkpoints):
    config.json, model.safetensors       the discriminator (ELECTRA) or the whole model (ALBERT)
    generator/config.json, generator/model.safetensors   ELECTRA only; embeddings equal to the discriminator's
    tokenizer files                      the source model's tokenizer
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AlbertConfig,
    AlbertForPreTraining,
    ElectraConfig,
    ElectraForMaskedLM,
    ElectraForPreTraining,
)

from peer.config import ModelSpec
from peer.errors import UserError
from peer.run.checkpoint_layout import GENERATOR_SUBDIR

logger = logging.getLogger(__name__)



@dataclass
class PretrainingModels:
    """What one peer trains. For ELECTRA the generator shares the discriminator's embedding module (one tensor each
    for word, position and token-type tables and the embedding LayerNorm); for ALBERT ``generator`` is None."""

    discriminator: nn.Module
    generator: nn.Module | None = None

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.discriminator, self.generator) if m is not None]

    def named_parameters(self):
        """Unique parameters of the pair in a stable order (shared embeddings appear once, under the discriminator)."""
        seen: set[int] = set()
        for prefix, module in (("discriminator", self.discriminator), ("generator", self.generator)):
            if module is None:
                continue
            for name, param in module.named_parameters():
                if id(param) in seen:
                    continue
                seen.add(id(param))
                yield f"{prefix}.{name}", param

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def train(self, mode: bool = True) -> PretrainingModels:
        for m in self.modules():
            m.train(mode)
        return self

    def eval(self) -> PretrainingModels:
        return self.train(False)

    def to(self, *args, **kwargs) -> PretrainingModels:
        for m in self.modules():
            m.to(*args, **kwargs)
        if self.generator is not None:
            tie_generator_embeddings(self.generator, self.discriminator)
        return self


def generator_sizes(spec: ModelSpec) -> tuple[int, int, int]:
    """(hidden, heads, ffn) of the ELECTRA generator: ``generator_fraction`` of the discriminator's width, keeping
    the discriminator's head size so attention stays comparable."""
    head_dim = spec.hidden_size // spec.num_heads
    heads = max(1, round(spec.num_heads * spec.generator_fraction))
    return heads * head_dim, heads, max(1, round(spec.ffn_size * spec.generator_fraction))


def _check_spec(spec: ModelSpec) -> None:
    if spec.hidden_size % spec.num_heads:
        raise UserError(f"hidden_size {spec.hidden_size} is not divisible by num_heads {spec.num_heads}")
    if min(spec.hidden_size, spec.num_layers, spec.num_heads, spec.ffn_size) <= 0:
        raise UserError("model sizes must be positive")
    if not 0 < spec.generator_fraction <= 1:
        raise UserError(f"generator_fraction must be in (0, 1], got {spec.generator_fraction}")


def electra_configs(
    spec: ModelSpec, vocab_size: int, pad_token_id: int = 0, type_vocab_size: int = 2
) -> tuple[ElectraConfig, ElectraConfig]:
    """HF configs of the discriminator and the generator for ``spec``."""
    _check_spec(spec)
    embedding_size = spec.embedding_size or spec.hidden_size
    common = dict(
        vocab_size=vocab_size,
        embedding_size=embedding_size,
        max_position_embeddings=spec.max_position_embeddings,
        type_vocab_size=type_vocab_size,
        pad_token_id=pad_token_id,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
    )
    disc = ElectraConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.ffn_size,
        architectures=["ElectraForPreTraining"],
        **common,
    )
    g_hidden, g_heads, g_ffn = generator_sizes(spec)
    gen = ElectraConfig(
        hidden_size=g_hidden,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=g_heads,
        intermediate_size=g_ffn,
        architectures=["ElectraForMaskedLM"],
        tie_word_embeddings=True,
        **common,
    )
    return disc, gen


def albert_config(spec: ModelSpec, vocab_size: int, pad_token_id: int = 0, type_vocab_size: int = 2) -> AlbertConfig:
    _check_spec(spec)
    return AlbertConfig(
        vocab_size=vocab_size,
        embedding_size=spec.embedding_size or 128,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        intermediate_size=spec.ffn_size,
        max_position_embeddings=spec.max_position_embeddings,
        type_vocab_size=type_vocab_size,
        pad_token_id=pad_token_id,
        hidden_act="gelu_new",
        architectures=["AlbertForPreTraining"],
    )


def tie_generator_embeddings(generator: nn.Module, discriminator: nn.Module) -> None:
    """Makes the generator use the discriminator's embedding module and re-ties its output layer to the shared word
    table. Needed after every module swap or device move: swapping an HF embedding module breaks the tie silently."""
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight


def build_models(spec: ModelSpec, vocab_size: int, pad_token_id: int = 0, seed: int | None = None) -> PretrainingModels:
    """Randomly initialised pretraining models for ``spec`` (the random-init baseline, tests, benches)."""
    if seed is not None:
        torch.manual_seed(seed)
    if spec.architecture == "electra":
        disc_cfg, gen_cfg = electra_configs(spec, vocab_size, pad_token_id)
        disc = ElectraForPreTraining(disc_cfg)
        gen = ElectraForMaskedLM(gen_cfg)
        tie_generator_embeddings(gen, disc)
        return PretrainingModels(disc, gen)
    if spec.architecture == "albert":
        return PretrainingModels(AlbertForPreTraining(albert_config(spec, vocab_size, pad_token_id)))
    raise UserError(f"unknown architecture {spec.architecture!r} (known: electra, albert)")


def save_models(models: PretrainingModels, out_dir: str | Path, tokenizer=None) -> None:
    """Writes the HF dir layout described in the module docstring (safetensors weights)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models.discriminator.save_pretrained(out, safe_serialization=True)
    if models.generator is not None:
        models.generator.save_pretrained(out / GENERATOR_SUBDIR, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def load_models(model_dir: str | Path) -> PretrainingModels:
    """Loads what ``save_models`` wrote, re-tying the ELECTRA generator's embeddings to the discriminator's."""
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"not a model dir (no config.json): {path}")
    try:
        config = ElectraConfig.from_pretrained(path) if _model_type(path) == "electra" else None
        if config is not None:
            disc = ElectraForPreTraining.from_pretrained(path)
            gen = None
            if (path / GENERATOR_SUBDIR / "config.json").is_file():
                gen = ElectraForMaskedLM.from_pretrained(path / GENERATOR_SUBDIR)
                tie_generator_embeddings(gen, disc)
            return PretrainingModels(disc, gen)
        if _model_type(path) == "albert":
            return PretrainingModels(AlbertForPreTraining.from_pretrained(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load model dir {path}: {str(e).splitlines()[0]}") from None
    raise UserError(f"unsupported model type {_model_type(path)!r} in {path} (known: electra, albert)")


def _model_type(path: Path) -> str:
    import json

    try:
        return json.loads((path / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError) as e:
        raise UserError(f"unreadable config.json in {path}: {e}") from None
