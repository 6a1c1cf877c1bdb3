"""The written initial state: same seed → byte-identical weight files (what peers compare by sha256), and a save/load
round trip that gives back exactly the grown weights and the source's function."""

import torch
from transformers import AutoTokenizer

from peer.config import GrowthSpec, ModelSpec
from peer.growth import DEFAULT_SOURCE, grow, load_source, resolve_source
from peer.growth.artifact import WEIGHT_FILES, sha256_file
from peer.growth.verify import measure_preservation, probe_batch
from peer.modeling import load_models, save_models

SPEC = ModelSpec(hidden_size=768, num_layers=2, num_heads=24, ffn_size=3072)


def two_layer_source(path):
    """MiniLM's first two blocks: the file path is what is under test, and two blocks write 2.5x fewer bytes."""
    source = load_source(path)
    drop = tuple(f"encoder.layer.{i}." for i in range(2, 6))
    config = {**source.config, "num_hidden_layers": 2}
    state = {k: v for k, v in source.state.items() if not k.startswith(drop)}
    return type(source)(path=source.path, model_type=source.model_type, config=config, state=state)


def test_same_seed_byte_identical_files_and_exact_round_trip(tmp_path):
    path = resolve_source(DEFAULT_SOURCE)
    source = two_layer_source(path)
    growth = GrowthSpec(seed=7, noise=0.01)
    first, second = grow(source, SPEC, growth), grow(source, SPEC, growth)
    save_models(first.models, tmp_path / "a")
    save_models(second.models, tmp_path / "b")
    for name in WEIGHT_FILES:
        assert sha256_file(tmp_path / "a" / name) == sha256_file(tmp_path / "b" / name), name

    loaded = load_models(tmp_path / "a")
    for grown, back in ((first.models.discriminator, loaded.discriminator), (first.models.generator, loaded.generator)):
        state, back_state = grown.state_dict(), back.state_dict()
        assert state.keys() == back_state.keys()
        for key, value in state.items():
            assert torch.equal(value, back_state[key]), key
    loaded.discriminator.eval()
    batch = probe_batch(AutoTokenizer.from_pretrained(path))
    err = measure_preservation(first.source_discriminator, loaded.discriminator, first.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-5 and err.logits_rel_l2 < 1e-5
