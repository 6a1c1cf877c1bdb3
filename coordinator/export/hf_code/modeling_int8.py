"""int8 weights for every linear layer and embedding table of a BERT-family model (ELECTRA, ALBERT): the loader that a
warmswarm ``int8`` export carries. Needs only ``torch`` and ``transformers``.

Format (``model.safetensors``): for each module named in ``config.int8_modules``, ``<name>.weight`` is int8
``[rows, cols]`` and ``<name>.weight_scale`` float32 ``[rows]``, with ``weight ≈ int8 × scale`` row by row (symmetric,
127 levels); every other tensor (biases, LayerNorms) stays float32. On a CPU with fbgemm a linear layer runs as
dynamic int8 (the activations are quantized per call, as in Q8BERT); elsewhere it dequantizes its weight.

    from transformers import AutoModel
    model = AutoModel.from_pretrained(DIR, trust_remote_code=True)   # or AutoModelForPreTraining
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F
from transformers import AlbertForPreTraining, AlbertModel, ElectraForPreTraining, ElectraModel

LEVELS = 127


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 values, float32 scale per row) with ``values * scale[:, None] ≈ weight``."""
    w = weight.detach().float()
    scale = (w.abs().amax(dim=1) / LEVELS).clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(w / scale[:, None]).clamp(-LEVELS, LEVELS).to(torch.int8), scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and a float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self._packed = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        q = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q.weight, q.weight_scale = quantize_rows(linear.weight)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().float().clone())
        return q

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.weight_scale[:, None]

    def _fbgemm(self):
        """The weight packed for ``quantized::linear_dynamic`` (made once), or None where that kernel is missing."""
        if self._packed is None:
            try:
                zero = torch.zeros(self.out_features, dtype=torch.long)
                with warnings.catch_warnings():  # torch marks its quantized tensors deprecated in favour of torchao
                    warnings.simplefilter("ignore")
                    scale = self.weight_scale.double()
                    qw = torch.quantize_per_channel(self.dequantized(), scale, zero, 0, torch.qint8)
                bias = None if self.bias is None else self.bias.detach().float()
                self._packed = torch.ops.quantized.linear_prepack(qw, bias)
            except (RuntimeError, AttributeError, NotImplementedError):
                self._packed = False
        return None if self._packed is False else self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            packed = self._fbgemm()
            if packed is not None:
                return torch.ops.quantized.linear_dynamic(x, packed)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized().to(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """``nn.Embedding`` with int8 rows and a float32 scale per row."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(num_embeddings))

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding) -> Int8Embedding:
        q = cls(embedding.num_embeddings, embedding.embedding_dim, embedding.padding_idx)
        q.weight, q.weight_scale = quantize_rows(embedding.weight)
        return q

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight).float() * self.weight_scale[ids].unsqueeze(-1)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8"


def quantizable_modules(model: nn.Module) -> list[str]:
    """Names of the linear layers and embedding tables to store as int8: all of them, except a linear layer with a
    single output (a classifier's last layer, e.g. ELECTRA's replaced-token score) where int8 saves nothing."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) or (isinstance(m, nn.Linear) and m.out_features > 1)
    ]


def swap_modules(model: nn.Module, names: list[str], convert: bool) -> None:
    """Replaces each named ``nn.Linear`` / ``nn.Embedding`` of ``model`` by its int8 counterpart: quantizing its
    weights (``convert``, at export) or empty, to be filled by ``from_pretrained`` (at load)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, child)
        if isinstance(old, nn.Embedding):
            new = Int8Embedding.from_embedding(old) if convert else Int8Embedding(*old.weight.shape, old.padding_idx)
        elif isinstance(old, nn.Linear):
            new = Int8Linear.from_linear(old) if convert else Int8Linear(old.in_features, old.out_features,
                                                                         old.bias is not None)  # fmt: skip
        else:
            raise TypeError(f"{name} is a {type(old).__name__}, not a linear layer or an embedding")
        setattr(parent, child, new)


def _prefixed(model: nn.Module, names: list[str]) -> list[str]:
    """``config.int8_modules`` names the modules of the model that was exported (a ``...ForPreTraining``); a bare
    encoder (``AutoModel``) holds them without the ``electra.`` / ``albert.`` prefix."""
    prefix = model.base_model_prefix + "."
    if not hasattr(model, model.base_model_prefix):
        return [n[len(prefix) :] for n in names if n.startswith(prefix)]
    return names


class Int8ElectraForPreTraining(ElectraForPreTraining):
    def __init__(self, config):
        super().__init__(config)
        swap_modules(self, _prefixed(self, config.int8_modules), convert=False)


class Int8ElectraModel(ElectraModel):
    def __init__(self, config):
        super().__init__(config)
        swap_modules(self, _prefixed(self, config.int8_modules), convert=False)


class Int8AlbertForPreTraining(AlbertForPreTraining):
    def __init__(self, config):
        super().__init__(config)
        swap_modules(self, _prefixed(self, config.int8_modules), convert=False)


class Int8AlbertModel(AlbertModel):
    def __init__(self, config):
        super().__init__(config)
        swap_modules(self, _prefixed(self, config.int8_modules), convert=False)
