"""peer.run.checkpoint_tensors: where each wire tensor lies in a checkpoint, down to its byte span."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hivemind.optim.state_averager import dump_optimizer_state
from safetensors.torch import save_file

from peer.run.checkpoint_tensors import (
    HEADER_LENGTH_BYTES,
    ByteRun,
    TensorSpan,
    WireLocation,
    byte_runs,
    decode_tensor,
    header_length,
    parameter_location,
    tensor_spans,
    wire_locations,
)
from peer.run.state_format import OPTIMIZER_FILE, SwarmState, write_optimizer_file

NAMES = ["discriminator.electra.w", "generator.head.bias", "discriminator.electra.b"]
SHAPES = [(4, 3), (5,), (3,)]


def _adam_after_a_step() -> tuple[list[torch.nn.Parameter], torch.optim.Optimizer]:
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]
    opt = torch.optim.Adam(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    opt.step()
    return params, opt


def test_parameters_live_in_their_model_files_and_others_in_none():
    assert parameter_location("discriminator.electra.w") == WireLocation("model*.safetensors", "electra.w")
    assert parameter_location("generator.head.bias") == WireLocation("generator/model*.safetensors", "head.bias")
    assert parameter_location("0.weight") is None  # a bench MLP: no checkpoint layout


def test_optimizer_tensors_are_located_in_the_order_hivemind_sends_them():
    params, opt = _adam_after_a_step()
    locations = wire_locations(NAMES, len(NAMES), opt.state_dict())
    _, flat = dump_optimizer_state(opt)  # what a donor sends after parameters and extras
    n = len(NAMES)
    assert len(locations) == 2 * n + len(flat)
    assert locations[n : 2 * n] == [WireLocation(OPTIMIZER_FILE, f"outer_momentum/{name}") for name in NAMES]
    by_key = {f"optimizer/{name}/{slot}": t for name, p in zip(NAMES, params, strict=True)
              for slot, t in opt.state[p].items()}  # fmt: skip
    for location, sent in zip(locations[2 * n :], flat, strict=True):
        assert location.files == OPTIMIZER_FILE
        assert torch.equal(by_key[location.key], sent), location.key


def test_extras_that_are_not_one_momentum_buffer_per_parameter_have_no_location():
    _, opt = _adam_after_a_step()
    locations = wire_locations(NAMES, 1, opt.state_dict())
    assert locations[len(NAMES)] is None


def _file_spans(path: Path, rel: str) -> tuple[bytes, dict[str, TensorSpan]]:
    data = path.read_bytes()
    n = header_length(data[:HEADER_LENGTH_BYTES])
    return data, tensor_spans(rel, data[HEADER_LENGTH_BYTES : HEADER_LENGTH_BYTES + n], len(data))


def test_spans_of_a_written_checkpoint_decode_to_its_tensors(tmp_path: Path):
    params, opt = _adam_after_a_step()
    momentum = {name: torch.full(s, float(i)) for i, (name, s) in enumerate(zip(NAMES, SHAPES, strict=True))}
    optimizer = {name: dict(opt.state[p]) for name, p in zip(NAMES, params, strict=True)}
    write_optimizer_file(SwarmState(7, {}, optimizer, momentum), tmp_path)
    save_file({"electra.w": params[0].detach(), "electra.b": params[2].detach(), "extra": torch.arange(3)},
              str(tmp_path / "model.safetensors"))  # fmt: skip
    data, spans = _file_spans(tmp_path / OPTIMIZER_FILE, OPTIMIZER_FILE)
    for name in NAMES:
        span = spans[f"outer_momentum/{name}"]
        assert torch.equal(decode_tensor(data[span.start : span.stop], span), momentum[name])
        for slot, value in optimizer[name].items():
            span = spans[f"optimizer/{name}/{slot}"]
            assert span.dtype == value.dtype and span.shape == tuple(value.shape)
            assert torch.equal(decode_tensor(data[span.start : span.stop], span), value)
    data, spans = _file_spans(tmp_path / "model.safetensors", "model.safetensors")
    assert torch.equal(decode_tensor(data[spans["electra.w"].start : spans["electra.w"].stop], spans["electra.w"]),
                       params[0].detach())  # fmt: skip
    assert spans["extra"].dtype == torch.int64


def test_a_ranges_spans_become_few_requests_in_file_order_across_small_gaps():
    def span(path: str, start: int, stop: int) -> TensorSpan:
        return TensorSpan(path, start, stop, torch.float32, ((stop - start) // 4,))

    # wire order is not file order: the optimizer lists tensors by module, safetensors by name
    spans = [span("a", 140, 160), span("b", 160, 200), span("a", 100, 140), span("a", 170, 190), span("a", 8, 12)]
    assert byte_runs(spans) == [
        ByteRun("a", 8, 12, (4,)),
        ByteRun("a", 100, 160, (2, 0)),
        ByteRun("a", 170, 190, (3,)),
        ByteRun("b", 160, 200, (1,)),
    ]
    # a gap of 10 bytes is fetched along before a tensor of 20, not one of 88 before a tensor of 40
    joined = [ByteRun("a", 8, 12, (4,)), ByteRun("a", 100, 190, (2, 0, 3)), ByteRun("b", 160, 200, (1,))]
    assert byte_runs(spans, max_gap=10) == byte_runs(spans, max_gap=1000) == joined
    assert byte_runs(spans, max_gap=9) == byte_runs(spans)
    assert byte_runs([]) == []


def test_damaged_headers_are_refused():
    with pytest.raises(ValueError):
        header_length(b"\xff" * 8)  # a header longer than safetensors allows
    with pytest.raises(ValueError):
        header_length(b"\x01\x00")
    good = b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}'
    assert tensor_spans("f", good, HEADER_LENGTH_BYTES + len(good) + 8)["t"].stop == HEADER_LENGTH_BYTES + len(good) + 8
    with pytest.raises(ValueError, match="do not fit"):
        tensor_spans("f", good, HEADER_LENGTH_BYTES + len(good) + 4)  # a truncated file
    with pytest.raises(ValueError, match="do not fit"):
        tensor_spans("f", good.replace(b"[2]", b"[3]"), 1 << 20)  # a shape its bytes do not hold
    with pytest.raises(ValueError, match="malformed or unknown"):
        tensor_spans("f", good.replace(b"F32", b"C64"), 1 << 20)
    with pytest.raises(ValueError, match="unreadable"):
        tensor_spans("f", b"{not json", 1 << 20)
