"""What peers send each other: hivemind's codecs by name, plus one 8-bit codec of our own.

Why our own: hivemind's ``Uniform8BitQuantization`` spans ±3 standard deviations around the mean and clamps the
rest, so the largest entries of a heavy-tailed tensor, which momentum and pseudo-gradients are, come back as the
mean of the outermost bucket: on Student-t(3) data 30 % relative L2 error and errors of 39 standard deviations at
the largest entries, and 2.8 % on a real DiLoCo outer momentum (measured, ``tests/peer/swarm/test_swarm_codecs.py``).
``MinMax8BitQuantization`` spans [min, max] instead: no entry is clamped, the extremes come back exact, and no
entry errs by more than one bucket, (max - min) / 255 (an entry and its bucket's mean lie in one bucket). It writes
hivemind's own ``UNIFORM_8BIT`` wire format (256-entry codebook + indices), so any hivemind peer decodes it; only
the choice of buckets differs. A reducer's reply is encoded by hivemind's registry codec for the sender's wire type,
so our reducer (``peer.swarm.overrides``) replies to ``UNIFORM_8BIT`` parts with this codec too (``reply_codec``).

``blockwise4bit`` (``peer.swarm.blockwise4bit``) is for DiLoCo pseudo-gradients only, with error feedback
(``peer.swarm.feedback``): it has a wire type of its own, which ``decode_part`` decodes and hivemind does not.
"""

from __future__ import annotations

import numpy as np
import torch
from hivemind.compression import (
    BlockwiseQuantization,
    CompressionBase,
    CompressionInfo,
    Float16Compression,
    NoCompression,
    ScaledFloat16Compression,
    Uniform8BitQuantization,
)
from hivemind.compression.adaptive import AdaptiveCompressionBase
from hivemind.compression.quantization import average_buckets
from hivemind.compression.serialization import _BASE_COMPRESSION_TYPES, deserialize_torch_tensor
from hivemind.proto import runtime_pb2

from peer.swarm.blockwise4bit import BLOCKWISE_4BIT, Blockwise4BitQuantization


class MinMax8BitQuantization(Uniform8BitQuantization):
    """256 equal buckets over [min, max] of the tensor part; each bucket decodes to the mean of its entries."""

    def quantize(self, tensor: torch.Tensor, allow_inplace: bool = False) -> tuple[np.ndarray, np.ndarray]:
        values = tensor.detach().float().flatten()
        low, high = values.min(), values.max()
        width = torch.clamp((high - low) / (self.n_bins - 1), min=torch.finfo(torch.float32).tiny)
        indices = torch.round((values - low) / width).clamp_(0, self.n_bins - 1).to(torch.uint8)
        codebook = average_buckets(values, indices, self.n_bins)
        return indices.reshape(tensor.shape).numpy(), codebook.numpy().astype(self.codebook_dtype)


CODECS: dict[str, type[CompressionBase]] = {
    "none": NoCompression,
    "fp16": Float16Compression,
    "scaled_fp16": ScaledFloat16Compression,
    "uniform8bit": Uniform8BitQuantization,
    "minmax8bit": MinMax8BitQuantization,
    "blockwise8bit": BlockwiseQuantization,
    "blockwise4bit": Blockwise4BitQuantization,
}

# codecs that lose too much to average values with: only pseudo-gradients with error feedback may use them
PSEUDO_GRADIENT_ONLY = frozenset({"blockwise4bit"})


def make_compression(name: str) -> CompressionBase:
    """Maps ``SwarmSpec.compression`` / ``momentum_compression`` to the codec of what peers send each other."""
    return CODECS[name]()


def reply_codec(wire_type: int) -> CompressionBase:
    """The codec a reducer encodes its reply with, for a part that arrived as ``wire_type``: ours for
    ``UNIFORM_8BIT`` (the same wire format, no clamping) and ``BLOCKWISE_4BIT``, hivemind's registry codec for every
    other type."""
    if wire_type == runtime_pb2.CompressionType.UNIFORM_8BIT:
        return MinMax8BitQuantization()
    if wire_type == BLOCKWISE_4BIT:
        return Blockwise4BitQuantization()
    return _BASE_COMPRESSION_TYPES[runtime_pb2.CompressionType.Name(wire_type)]


def replies_with_average(wire_type: int) -> bool:
    """Whether a reducer's reply of ``wire_type`` carries the average itself rather than ``average - part``: so for
    ``BLOCKWISE_4BIT`` (why: ``peer.swarm.overrides.allreduce``)."""
    return wire_type == BLOCKWISE_4BIT


def decode_part(message: runtime_pb2.Tensor) -> torch.Tensor:
    """``deserialize_torch_tensor`` that also knows ``BLOCKWISE_4BIT``, our wire type hivemind does not register."""
    if message.compression == BLOCKWISE_4BIT:
        return Blockwise4BitQuantization().extract(message)
    return deserialize_torch_tensor(message)


def codec_for(compression: CompressionBase, info: CompressionInfo) -> CompressionBase:
    """The codec ``compression`` applies to a tensor part described by ``info`` (adaptive codecs resolved)."""
    while isinstance(compression, AdaptiveCompressionBase):
        compression = compression.choose_compression(info)
    return compression
