"""The fault harness reads a peer's served state from hivemind's stream; a stream cut short inside a tensor must be
read again, not crash the scenario (bench/faultlib/peer_state.py)."""

import torch
from hivemind.compression import serialize_torch_tensor
from hivemind.proto.runtime_pb2 import CompressionType
from hivemind.utils.streaming import combine_from_streaming, split_for_streaming

from bench.faultlib.peer_state import _served_state

METADATA = {"epoch": 7, "optimizer_metadata": [{"type": "value", "value": 0.01}]}


def _sent(tensor: torch.Tensor, keep_parts: int | None = None) -> bytes:
    """``tensor`` as the harness receives it: hivemind's serialisation, split into stream parts, the first
    ``keep_parts`` of them put back together (all of them when None)."""
    parts = list(split_for_streaming(serialize_torch_tensor(tensor, CompressionType.NONE), chunk_size_bytes=4096))
    assert keep_parts is None or len(parts) > keep_parts  # a cut inside the tensor, not after it
    return combine_from_streaming(parts[:keep_parts]).SerializeToString()


def test_a_whole_stream_decodes_to_the_tensors_sent():
    table, bias = torch.randn(300, 32), torch.randn(300)
    state = _served_state("peer-abcdef", METADATA, [_sent(table), _sent(bias)])
    assert state is not None and state.step == 7 and state.optimizer_values == (0.01,)
    assert torch.equal(state.tensors[0], table) and torch.equal(state.tensors[1], bias)


def test_a_stream_cut_inside_a_tensor_is_left_out_to_be_read_again():
    table = torch.randn(300, 32)
    assert _served_state("peer-abcdef", METADATA, [_sent(torch.randn(300)), _sent(table, keep_parts=2)]) is None
