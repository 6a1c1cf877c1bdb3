"""peer.swarm.codecs: our 8-bit codec against hivemind's on heavy-tailed tensors, through hivemind's own decoder."""

import pytest
import torch
from hivemind.compression import CompressionInfo, Uniform8BitQuantization, deserialize_torch_tensor

from peer.swarm.codecs import MinMax8BitQuantization


def roundtrip(codec, x: torch.Tensor) -> torch.Tensor:
    return deserialize_torch_tensor(codec.compress(x, CompressionInfo.from_tensor(x)))  # hivemind's decoder


@pytest.fixture
def heavy_tailed() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.distributions.StudentT(3.0).sample((131072,))  # one averaging part's worth of fp32 values


def test_minmax_never_errs_by_more_than_one_bucket_and_keeps_the_extremes(heavy_tailed):
    x = heavy_tailed
    back = roundtrip(MinMax8BitQuantization(), x)
    bucket = float(x.max() - x.min()) / 255
    assert back.shape == x.shape and back.dtype == x.dtype
    assert float((back - x).abs().max()) <= bucket * 1.0001
    assert float(back[x.argmax()]) == pytest.approx(float(x.max()), rel=1e-6)
    assert float(back[x.argmin()]) == pytest.approx(float(x.min()), rel=1e-6)


def test_hivemind_uniform8bit_clamps_the_largest_entries_which_minmax_does_not(heavy_tailed):
    x = heavy_tailed
    theirs, ours = roundtrip(Uniform8BitQuantization(), x), roundtrip(MinMax8BitQuantization(), x)
    rel = lambda back: float((back - x).norm() / x.norm())  # noqa: E731
    assert rel(theirs) > 0.2  # measured 0.30: the tails come back as the outer buckets' means
    assert rel(ours) < 0.1  # measured 0.09
    assert float((theirs - x).abs().max()) > 10 * float((ours - x).abs().max())


def test_minmax_handles_constant_and_tiny_tensors():
    for x in (torch.zeros(1000), torch.full((7,), 3.5), torch.tensor([1e-30, -1e-30])):
        back = roundtrip(MinMax8BitQuantization(), x)
        assert torch.isfinite(back).all()
        assert float((back - x).abs().max()) <= 1e-30 + float(x.abs().max()) * 1e-6


def test_a_reducer_replies_to_8bit_parts_with_minmax_and_to_others_with_hivemind():
    from hivemind.compression import Float16Compression
    from hivemind.proto import runtime_pb2

    from peer.swarm.codecs import reply_codec

    assert isinstance(reply_codec(runtime_pb2.CompressionType.UNIFORM_8BIT), MinMax8BitQuantization)
    assert type(reply_codec(runtime_pb2.CompressionType.FLOAT16)) is Float16Compression
