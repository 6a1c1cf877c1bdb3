"""Every run config in ``configs/`` loads, validates and survives the coordinator's publish round trip; the real-run
recipe is what its comments say (a hub corpus, diloco with overlapped rounds, a batch in the thousands, MiniLM grown
exactly 2x wide and 2x deep). Nothing is downloaded: the source model is the packaged MiniLM, the corpus is only
named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from peer.config import config_from_dict, config_to_dict, load_config
from peer.growth.grow import grow, target_dims
from peer.growth.layout import dims_from_hf_config
from peer.growth.source import load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch
from peer.modeling import build_models
from peer.swarm.modes.diloco import momentum_sync

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
REAL_RUN = ROOT / "configs" / "minilm-768x12-fineweb-edu.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_validates_and_round_trips(path):
    cfg = load_config(path)
    assert config_from_dict(config_to_dict(cfg)) == cfg, "what a coordinator publishes must parse back the same"
    target_dims(cfg.model)  # heads divide the width
    if cfg.swarm.averaging == "diloco":
        momentum_sync(cfg.swarm)  # catch_up only with overlapped rounds


def test_real_run_recipe_streams_a_hub_corpus_with_diloco_overlap_and_grows_minilm_2x():
    cfg = load_config(REAL_RUN)
    assert cfg.data.source != "embedded" and not (ROOT / cfg.data.source).exists(), "a hub dataset id, streamed"
    assert cfg.data.hub_config and cfg.data.text_column
    assert cfg.swarm.averaging == "diloco" and cfg.swarm.overlap_rounds and cfg.swarm.target_batch_size >= 1000
    source = json.loads((resolve_source(cfg.growth.source) / "config.json").read_text())
    src, tgt = dims_from_hf_config(source), target_dims(cfg.model)
    assert (tgt.hidden, tgt.ffn, tgt.heads, tgt.layers) == (2 * src.hidden, 2 * src.ffn, 2 * src.heads, 2 * src.layers)
    assert tgt.head_dim == src.head_dim and cfg.growth.width_method == "exact"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_real_run_recipe_grows_from_minilm_exactly_in_width_into_the_runs_shapes():
    """The real 768 x 12 growth (about 15 s on a CPU): width exact in fp64 (noise off), and the recipe's growth
    (noise on, stacked) gives the very tensors the run's models have."""
    cfg = load_config(REAL_RUN)
    source_dir = resolve_source(cfg.growth.source)
    source = load_source(source_dir)
    width_only = grow(
        source, cfg.model, dataclasses.replace(cfg.growth, noise=0.0), dtype=torch.float64, keep_source_depth=True
    )
    batch = probe_batch(AutoTokenizer.from_pretrained(source_dir))
    kept = measure_preservation(
        width_only.source_discriminator, width_only.models.discriminator, width_only.hidden_index, batch
    )
    assert kept.hidden_rel_l2 < 1e-12 and kept.logits_rel_l2 < 1e-12, kept

    grown = grow(source, cfg.model, cfg.growth)
    layers = int(source.config["num_hidden_layers"])
    assert grown.record["layer_map"] == list(range(layers)) * 2, "stacked: the source's layers twice over"
    with torch.device("meta"):
        built = build_models(cfg.model, int(source.config["vocab_size"]), seed=0)
    for name in ("discriminator", "generator"):
        got = {k: tuple(v.shape) for k, v in getattr(grown.models, name).state_dict().items()}
        want = {k: tuple(v.shape) for k, v in getattr(built, name).state_dict().items()}
        assert got == want, name
