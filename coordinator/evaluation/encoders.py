"""The encoders an evaluation compares, and the split of an encoder into a frozen bottom and a trainable top.

Three models: the checkpoint's discriminator encoder (``ElectraModel`` inside ``ElectraForPreTraining``, or
ALBERT's), the source model it was grown from (a plain BERT such as MiniLM), and a random init of the checkpoint's
architecture (one draw, seeded). Each is used the same way: the embeddings and all but the top ``train_layers``
layers are frozen, their output is computed once per text (``frozen_features``), and a ``TopEncoder`` (a copy of the
top layers + mean pooling over real tokens) is what each fine-tuning seed trains.

Why mean pooling: it is MiniLM's own pooling, and under exact width growth (``peer.growth``: every hidden unit
duplicated) the grown model's pooled vector is the source's, duplicated, so cosine similarities are unchanged.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from peer.errors import UserError
from peer.growth.artifact import GROWTH_RECORD
from peer.growth.source import DEFAULT_SOURCE, resolve_source
from peer.modeling import PretrainingModels, load_models, tie_generator_embeddings

logger = logging.getLogger(__name__)

INFERENCE_BATCH = 32


@dataclass
class Encoder:
    """A model under evaluation: its encoder (an HF base model, eval mode), tokenizer and, where it has the run's
    pretraining heads, the pretraining models for the held-out metrics."""

    role: str
    name: str
    encoder: nn.Module
    tokenizer: object
    pretraining: PretrainingModels | None = None

    @property
    def parameters(self) -> int:
        """Its weights, counted whether they are trainable parameters or stored buffers: an int8 export keeps its
        weights as int8 buffers (``modeling_int8``), and counting parameters alone gave it 0.1 M of 66.4 M."""
        buffers = sum(b.numel() for name, b in self.encoder.named_buffers() if name.endswith(".weight"))
        return sum(p.numel() for p in self.encoder.parameters()) + buffers


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from {path}: {str(e).splitlines()[0]}") from None


def backbone(model: nn.Module) -> nn.Module:
    """The encoder inside an HF task model (``model.electra``, ``model.albert``, ...), or the model itself."""
    return getattr(model, getattr(model, "base_model_prefix", ""), model)


def load_checkpoint(path: str | Path) -> PretrainingModels:
    """A checkpoint dir (coordinator or trainer layout) or a ``peer grow`` output; anything else is one clear line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is not a directory")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a checkpoint (no config.json)")
    return load_models(path).eval()


def source_name(checkpoint: str | Path) -> str:
    """The model a checkpoint was grown from, as its ``growth.json`` names it (the default source without one)."""
    path = Path(checkpoint) / GROWTH_RECORD
    if not path.is_file():
        return DEFAULT_SOURCE
    try:
        return str(json.loads(path.read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"unreadable {path}: {e}") from None


def load_source_encoder(source: str) -> Encoder:
    from transformers import AutoModel

    path = resolve_source(source)
    try:
        model = AutoModel.from_pretrained(str(path))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the source model {source}: {str(e).splitlines()[0]}") from None
    return Encoder("source", source, backbone(model).eval(), load_tokenizer(path))


def random_like(models: PretrainingModels, seed: int) -> PretrainingModels:
    """Fresh modules of the same classes and configs as ``models``, drawn with ``seed`` (the random-init reference)."""
    torch.manual_seed(seed)
    disc = type(models.discriminator)(models.discriminator.config)
    gen = None
    if models.generator is not None:
        gen = type(models.generator)(models.generator.config)
        tie_generator_embeddings(gen, disc)
    return PretrainingModels(disc, gen).eval()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weight = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weight).sum(1) / weight.sum(1).clamp(min=1.0)


def _layers(encoder: nn.Module, train_layers: int) -> nn.ModuleList | None:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if train_layers == 0:
        return layers
    if not isinstance(layers, nn.ModuleList):
        raise UserError(
            f"{type(encoder).__name__} has no separate layers to fine-tune (ALBERT shares one); use --train-layers 0"
        )
    if train_layers > len(layers):
        raise UserError(f"--train-layers {train_layers} exceeds the encoder's {len(layers)} layers")
    return layers


@torch.no_grad()
def frozen_features(
    encoder: nn.Module, tokenizer, texts: list[str], max_length: int, train_layers: int
) -> list[torch.Tensor]:
    """Per text, the hidden states ``[tokens, hidden]`` that enter the top ``train_layers`` layers (the encoder's
    output when 0), real tokens only. Texts are batched by length, so little is spent on padding."""
    layers = _layers(encoder, train_layers)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: list[torch.Tensor | None] = [None] * len(texts)
    for start in range(0, len(order), INFERENCE_BATCH):
        idx = order[start : start + INFERENCE_BATCH]
        enc = tokenizer(
            [texts[i] for i in idx], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        result = encoder(**enc, output_hidden_states=train_layers > 0)
        if train_layers:
            hidden = result.hidden_states[len(layers) - train_layers]
        else:
            hidden = result.last_hidden_state
        for row, i in enumerate(idx):
            out[i] = hidden[row, : int(enc["attention_mask"][row].sum())].clone()
    return out  # type: ignore[return-value]


def pad(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads per-text hidden states into ``[B, L, H]`` and their attention mask ``[B, L]``."""
    length = max(f.shape[0] for f in features)
    hidden = features[0].new_zeros(len(features), length, features[0].shape[1])
    mask = torch.zeros(len(features), length, dtype=torch.long)
    for i, f in enumerate(features):
        hidden[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = 1
    return hidden, mask


class TopEncoder(nn.Module):
    """A trainable copy of an encoder's top ``train_layers`` layers over ``frozen_features``, mean-pooled. With 0
    layers it is the pooling alone. The original encoder is never modified, so every seed starts from the same
    weights."""

    def __init__(self, encoder: nn.Module, train_layers: int):
        super().__init__()
        layers = _layers(encoder, train_layers)
        self.config = encoder.config
        self.layers = nn.ModuleList(copy.deepcopy(list(layers)[len(layers) - train_layers :]) if train_layers else [])

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if len(self.layers):
            from transformers.masking_utils import create_bidirectional_mask

            attention = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=mask)
            for layer in self.layers:
                hidden = layer(hidden, attention)
        return mean_pool(hidden, mask)
