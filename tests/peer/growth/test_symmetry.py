"""Symmetry breaking: with noise the grown function is unchanged yet the copies drift apart under training; without
noise (and without dropout) they stay identical for ever."""

import pytest
import torch
from transformers import AutoTokenizer

from peer.config import GrowthSpec, ModelSpec
from peer.growth import DEFAULT_SOURCE, grow, load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch

SPEC = ModelSpec(hidden_size=768, num_layers=2, num_heads=24, ffn_size=3072)


@pytest.fixture(scope="module")
def setup():
    path = resolve_source(DEFAULT_SOURCE)
    source = load_source(path)
    # Two source layers keep this fast; the symmetry argument is per block.
    source.config["num_hidden_layers"] = 2
    state = {
        k: v for k, v in source.state.items() if not k.startswith(tuple(f"encoder.layer.{i}." for i in range(2, 6)))
    }
    source = type(source)(path=source.path, model_type=source.model_type, config=source.config, state=state)
    return source, probe_batch(AutoTokenizer.from_pretrained(path))


@torch.no_grad()
def _copy_gap(model, batch) -> float:
    """Relative difference between the two copies (halves) of the final hidden state."""
    h = model(**batch, output_hidden_states=True).hidden_states[-1]
    return float((h[..., :384] - h[..., 384:]).norm() / h[..., :384].norm())


def _train(model, batch, steps=20):
    model.eval()  # no dropout: only the noise may break the symmetry
    model.electra.embeddings.requires_grad_(False)  # the 30522-row table dominates the cost and is not the point
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    labels = (batch["input_ids"] % 7 == 0).float()
    for _ in range(steps):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_noise_preserves_function_and_breaks_symmetry(setup, noise):
    source, batch = setup
    result = grow(source, SPEC, GrowthSpec(noise=noise, seed=1), dtype=torch.float64)
    err = measure_preservation(result.source_discriminator, result.models.discriminator, result.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-10 and err.logits_rel_l2 < 1e-10
    disc = grow(source, SPEC, GrowthSpec(noise=noise, seed=1), dtype=torch.float32).models.discriminator
    assert _copy_gap(disc, batch) < 1e-6
    _train(disc, batch)
    if noise:
        assert _copy_gap(disc, batch) > 1e-3
    else:
        assert _copy_gap(disc, batch) < 1e-6
