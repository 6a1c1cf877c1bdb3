"""Where each tensor of hivemind's wire state lies in a coordinator checkpoint, down to its bytes: pure functions, so
that a joiner can fetch a range of its state download from the checkpoint's files with HTTP ``Range`` requests
(``peer.swarm.checkpoint_source``) instead of from a donor.

Why byte spans and not whole files: a joiner's share of the split download is a contiguous range of the wire list,
which cuts across the model files and ``optimizer.safetensors``; a safetensors file is an 8-byte header length, a
JSON header giving each tensor's dtype, shape and byte offsets, then the raw little-endian data, so the bytes of any
tensor are one span of its file.

The wire list (``peer.run.state_format``) is ``[parameters in wire order] + [extras: outer momentum] + [optimizer
tensors, in the order hivemind's ``dump_optimizer_state`` flattens ``optimizer.state_dict()``]``. A parameter named
``discriminator.<hf name>`` (``PretrainingModels.named_parameters``) is ``<hf name>`` in the checkpoint's root model
files, ``generator.<hf name>`` the same in ``generator/``; the others are ``optimizer.safetensors`` keys.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from hivemind.utils.nested import nested_flatten

from peer.run.checkpoint_layout import GENERATOR_SUBDIR
from peer.run.state_format import OPTIMIZER_FILE

HEADER_LENGTH_BYTES = 8  # a safetensors file starts with its header's length, a little-endian u64
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit: a longer "header" is a damaged or foreign file

# safetensors dtype names (the torch dtypes a peer's state holds)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

# the model files of a checkpoint dir, by the prefix ``PretrainingModels.named_parameters`` gives a parameter
# (``model*.safetensors``: one file, or HF's shards ``model-00001-of-00002.safetensors``)
_MODEL_FILES = {"discriminator.": "model*.safetensors", "generator.": f"{GENERATOR_SUBDIR}/model*.safetensors"}


@dataclass(frozen=True)
class WireLocation:
    """Where one wire tensor is stored: tensor ``key`` in the checkpoint file matching the glob ``files`` (a glob
    because a large model's weights are sharded over several files)."""

    files: str
    key: str


@dataclass(frozen=True)
class TensorSpan:
    """One tensor's bytes in a checkpoint file: ``[start, stop)`` of file ``path``, of ``dtype`` and ``shape``."""

    path: str
    start: int
    stop: int
    dtype: torch.dtype
    shape: tuple[int, ...]


def parameter_location(name: str) -> WireLocation | None:
    """Where parameter ``name`` (as ``PretrainingModels.named_parameters`` names it) is stored; None for a name of
    another model (a bench's MLP): such a state has no checkpoint layout to fetch from."""
    for prefix, files in _MODEL_FILES.items():
        if name.startswith(prefix):
            return WireLocation(files, name[len(prefix) :])
    return None


def wire_locations(names: Sequence[str], num_extras: int, optimizer_state: dict) -> list[WireLocation | None]:
    """The location of each wire tensor of a peer whose parameters are ``names`` (wire order), with ``num_extras``
    extra tensors (one outer-momentum buffer per parameter, or none) and whose optimizer's ``state_dict()`` is
    ``optimizer_state`` (the same recipe as the donors': it fixes the layout of the optimizer tensors). None for a
    tensor the checkpoint does not hold (extras that are not outer momentum, a tensor among the param groups)."""
    out = [parameter_location(name) for name in names]
    if num_extras == len(names):
        out += [WireLocation(OPTIMIZER_FILE, f"outer_momentum/{name}") for name in names]
    else:
        out += [None] * num_extras
    # the optimizer's tensors, labelled with their checkpoint key, flattened as hivemind's dump_optimizer_state does
    labelled = dict(optimizer_state)
    labelled["state"] = {
        position: {
            slot: WireLocation(OPTIMIZER_FILE, f"optimizer/{names[position]}/{slot}")
            if isinstance(value, torch.Tensor)
            else value
            for slot, value in entry.items()
        }
        for position, entry in optimizer_state.get("state", {}).items()
        if isinstance(position, int) and 0 <= position < len(names)
    }
    for leaf in nested_flatten(labelled):
        if isinstance(leaf, WireLocation):
            out.append(leaf)
        elif isinstance(leaf, torch.Tensor):
            out.append(None)
    return out


def header_length(first_bytes: bytes) -> int:
    """The header length a safetensors file's first 8 bytes give; ValueError for a damaged one."""
    if len(first_bytes) != HEADER_LENGTH_BYTES:
        raise ValueError(f"a safetensors file starts with {HEADER_LENGTH_BYTES} bytes, got {len(first_bytes)}")
    (n,) = struct.unpack("<Q", first_bytes)
    if not 2 <= n <= MAX_HEADER_BYTES:
        raise ValueError(f"a safetensors header of {n} bytes")
    return n


def tensor_spans(path: str, header: bytes, file_size: int) -> dict[str, TensorSpan]:
    """Each tensor's span in the safetensors file ``path`` of ``file_size`` bytes whose JSON header is ``header``;
    ValueError when the header is damaged, names a dtype we do not read, or a span that does not fit its dtype and
    shape or leaves the file."""
    try:
        entries = json.loads(header)
    except ValueError as e:
        raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object")
    data_start = HEADER_LENGTH_BYTES + len(header)
    spans = {}
    for key, entry in entries.items():
        if key == "__metadata__":
            continue
        try:
            dtype = DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{path}: tensor {key!r} has a malformed or unknown header entry {entry!r}") from None
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        if begin < 0 or end - begin != nbytes or data_start + end > file_size:
            raise ValueError(f"{path}: tensor {key!r} spans bytes {begin}-{end}, which do not fit {entry} in the file")
        spans[key] = TensorSpan(path, data_start + begin, data_start + end, dtype, shape)
    return spans


@dataclass(frozen=True)
class ByteRun:
    """Bytes ``[start, stop)`` of file ``path``, fetched with one HTTP ``Range`` request, which hold the tensors
    ``members`` (indices into the spans given to ``byte_runs``), in the order of their bytes."""

    path: str
    start: int
    stop: int
    members: tuple[int, ...]


def byte_runs(spans: Sequence[TensorSpan], max_gap: int = 0) -> list[ByteRun]:
    """``spans`` (the wire tensors of one range) as few requests as possible: sorted by file and offset, a span
    joins the run before it when the bytes between them (fetched and thrown away) are no more than ``max_gap`` nor
    than its own, so that what is thrown away never exceeds what is wanted.

    Why: the wire order is the optimizer's (module order, param groups) and safetensors sorts its keys by name, so
    a range's tensors are scattered over each file; one request per tensor would cost one round trip each
    (hundreds for a BERT-base state), while the small tensors between two of ours (biases, LayerNorms) cost
    little to fetch along."""
    order = sorted(range(len(spans)), key=lambda i: (spans[i].path, spans[i].start, i))
    runs: list[ByteRun] = []
    for i in order:
        span = spans[i]
        last = runs[-1] if runs else None
        if (
            last is not None
            and last.path == span.path
            and span.start - last.stop <= min(max_gap, span.stop - span.start)
        ):
            runs[-1] = ByteRun(last.path, last.start, max(last.stop, span.stop), (*last.members, i))
        else:
            runs.append(ByteRun(span.path, span.start, span.stop, (i,)))
    return runs


def decode_tensor(data: bytes | bytearray | memoryview, span: TensorSpan) -> torch.Tensor:
    """The tensor stored in ``data``, the bytes of ``span`` (a copy, writable; safetensors data is little-endian,
    as every platform a peer runs on)."""
    if len(data) != span.stop - span.start:
        raise ValueError(f"{span.path}: {len(data)} bytes for a tensor of {span.stop - span.start}")
    if not data:
        return torch.empty(span.shape, dtype=span.dtype)
    return torch.frombuffer(bytearray(data), dtype=span.dtype).reshape(span.shape)
