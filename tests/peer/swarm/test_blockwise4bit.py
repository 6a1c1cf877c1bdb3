"""peer.swarm.blockwise4bit: the 4-bit pseudo-gradient codec, its error bound, its size and its wire type."""

import pytest
import torch
from hivemind.compression import CompressionInfo, deserialize_torch_tensor
from hivemind.proto import runtime_pb2

from peer.swarm.blockwise4bit import BLOCK, BLOCKWISE_4BIT, Blockwise4BitQuantization
from peer.swarm.codecs import decode_part, make_compression, replies_with_average, reply_codec


def over_the_wire(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``x`` encoded, serialised to bytes as a peer sends it, parsed and decoded; and the bytes it took."""
    message = Blockwise4BitQuantization().compress(x, CompressionInfo.from_tensor(x))
    wire = message.SerializeToString()
    return decode_part(runtime_pb2.Tensor.FromString(wire)), len(wire)


def per_block(x: torch.Tensor) -> torch.Tensor:
    flat = x.detach().float().flatten()
    return torch.nn.functional.pad(flat, (0, (-flat.numel()) % BLOCK)).view(-1, BLOCK)


@pytest.fixture
def pseudo_gradient() -> torch.Tensor:
    """Heavy-tailed, of mixed magnitudes across blocks, and not a whole number of blocks."""
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((131072 + 37,)) * 1e-3
    x[:4096] *= 1e-4  # some blocks far smaller than the rest: a per-tensor scale would zero them
    return x


def test_every_value_errs_by_at_most_half_a_step_of_its_block(pseudo_gradient):
    x = pseudo_gradient
    back, _ = over_the_wire(x)
    assert back.shape == x.shape and back.dtype == x.dtype
    step = per_block(x).abs().amax(dim=1) / 7
    worst = per_block(back - x).abs().amax(dim=1)
    assert bool((worst <= step / 2 * (1 + 1e-6)).all()), float((worst / step).max())
    # the 10^4x smaller blocks keep their own resolution: the same relative error there as in the rest
    rel = lambda part: float((back[part] - x[part]).norm() / x[part].norm())  # noqa: E731
    small, rest = rel(slice(0, 4096)), rel(slice(4096, None))
    assert small < 1.5 * rest and rest < 0.2, (small, rest)  # measured 0.167 and 0.165 (Student-t(3), 4 bits)


def test_four_bits_and_a_scale_per_64_values_cost_at_most_0_6_bytes_a_value(pseudo_gradient):
    _, nbytes = over_the_wire(pseudo_gradient)
    per_value = nbytes / pseudo_gradient.numel()
    assert per_value <= 0.6, per_value  # 0.5625 + the message header: measured 0.5628
    codec = Blockwise4BitQuantization()
    assert codec.estimate_compression_ratio(CompressionInfo.from_tensor(pseudo_gradient)) == pytest.approx(0.5625 / 4)


def test_values_on_the_grid_come_back_bit_for_bit_and_zeros_stay_zero(pseudo_gradient):
    codec = Blockwise4BitQuantization()
    once = codec.roundtrip(pseudo_gradient)
    assert torch.equal(codec.roundtrip(once), once)  # what error feedback sends is sent without loss
    for x in (torch.zeros(100), torch.tensor([0.0, 1e-30, -1e-30]), torch.full((3, 5), -2.5)):
        back, _ = over_the_wire(x)
        assert torch.equal(back[x == 0], x[x == 0])
        assert float((back - x).abs().max()) <= float(x.abs().max()) / 14 * (1 + 1e-6)


def test_shape_and_dtype_survive_and_bad_input_is_refused():
    x = torch.randn(3, 70, dtype=torch.bfloat16)
    back, _ = over_the_wire(x)
    assert back.shape == (3, 70) and back.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="non-finite"):
        over_the_wire(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="does not support"):
        over_the_wire(torch.arange(5))
    message = Blockwise4BitQuantization().compress(torch.ones(100), CompressionInfo.from_tensor(torch.ones(100)))
    message.buffer = message.buffer[:-1]  # a truncated part is an error, not a shorter tensor
    with pytest.raises(ValueError, match="has 71 bytes"):
        decode_part(message)


def test_a_peer_without_the_codec_fails_clearly_rather_than_mis_decode():
    """hivemind's own decoder (a peer that does not know BLOCKWISE_4BIT) on our part: a clear error."""
    x = torch.randn(256)
    wire = Blockwise4BitQuantization().compress(x, CompressionInfo.from_tensor(x)).SerializeToString()
    parsed = runtime_pb2.Tensor.FromString(wire)
    assert parsed.compression == BLOCKWISE_4BIT  # proto3 enums are open: the value travels unchanged
    with pytest.raises(ValueError, match="no name defined for value 1000"):
        deserialize_torch_tensor(parsed)


def test_the_name_maps_to_the_codec_whose_replies_carry_the_average():
    assert isinstance(make_compression("blockwise4bit"), Blockwise4BitQuantization)
    assert isinstance(reply_codec(BLOCKWISE_4BIT), Blockwise4BitQuantization)
    assert replies_with_average(BLOCKWISE_4BIT)
    assert not replies_with_average(runtime_pb2.CompressionType.FLOAT16)
    assert not replies_with_average(runtime_pb2.CompressionType.UNIFORM_8BIT)
