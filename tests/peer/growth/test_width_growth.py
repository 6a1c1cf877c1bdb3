"""Exact width growth on the TRAINED MiniLM source: function preserved in fp64/fp32, eager and SDPA, with padding
and token types; k chunks equal the source hidden; step-0 losses equal; widened heads and uneven FFN stay exact."""

import pytest
import torch
from transformers import AutoTokenizer

from peer.config import GrowthSpec, ModelSpec
from peer.errors import UserError
from peer.growth import DEFAULT_SOURCE, grow, load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch

SMALL = ModelSpec(hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072)


@pytest.fixture(scope="module")
def source():
    return load_source(resolve_source(DEFAULT_SOURCE))


@pytest.fixture(scope="module")
def batch():
    b = probe_batch(AutoTokenizer.from_pretrained(resolve_source(DEFAULT_SOURCE)))
    assert (b["attention_mask"] == 0).any() and (b["token_type_ids"] == 1).any()
    return b


@pytest.fixture(scope="module")
def grown64(source):
    return grow(source, SMALL, GrowthSpec(), dtype=torch.float64)


def _loss(logits, batch):
    labels = (torch.arange(logits.numel()).reshape(logits.shape) % 3 == 0).to(logits.dtype)
    per_token = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    mask = batch["attention_mask"].to(logits.dtype)
    return (per_token * mask).sum() / mask.sum()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_exact_fp64_hidden_chunks_and_step0_loss(grown64, batch, attn):
    src, tgt = grown64.source_discriminator, grown64.models.discriminator
    src.set_attn_implementation(attn)
    tgt.set_attn_implementation(attn)
    err = measure_preservation(src, tgt, grown64.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-10 and err.logits_rel_l2 < 1e-10
    with torch.no_grad():
        s, t = src(**batch, output_hidden_states=True), tgt(**batch, output_hidden_states=True)
    for hs, ht in zip(s.hidden_states, t.hidden_states, strict=True):
        for chunk in ht.split(384, dim=-1):
            torch.testing.assert_close(chunk, hs, rtol=0, atol=1e-10)
    assert abs(float(_loss(s.logits, batch) - _loss(t.logits, batch))) < 1e-12


def test_exact_fp32(source, batch):
    result = grow(source, SMALL, GrowthSpec(), dtype=torch.float32)
    assert next(result.models.discriminator.parameters()).dtype == torch.float32
    for attn in ("eager", "sdpa"):
        result.source_discriminator.set_attn_implementation(attn)
        result.models.discriminator.set_attn_implementation(attn)
        err = measure_preservation(result.source_discriminator, result.models.discriminator, result.hidden_index, batch)
        assert err.hidden_rel_l2 < 1e-5 and err.logits_rel_l2 < 1e-5, attn


def test_widened_heads_and_uneven_ffn_are_exact(source, batch):
    """12 heads of 64 (head size doubled: per-head copy + q rescale) and FFN 1536 -> 2000 (Net2Net counts)."""
    spec = ModelSpec(hidden_size=768, num_layers=6, num_heads=12, ffn_size=2000)
    result = grow(source, spec, GrowthSpec(), dtype=torch.float64)
    err = measure_preservation(result.source_discriminator, result.models.discriminator, result.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-10 and err.logits_rel_l2 < 1e-10


def test_factorised_target_embedding_keeps_e(source, batch):
    """E kept at 384 with hidden 768: the projection is [I; I] and the function is unchanged."""
    spec = ModelSpec(hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072, embedding_size=384)
    result = grow(source, spec, GrowthSpec(), dtype=torch.float64)
    proj = result.models.discriminator.electra.embeddings_project.weight
    torch.testing.assert_close(proj, torch.cat([torch.eye(384), torch.eye(384)]).double(), rtol=0, atol=0)
    err = measure_preservation(result.source_discriminator, result.models.discriminator, result.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-10


def test_fpi_is_approximate_and_measured(source, batch):
    spec = ModelSpec(hidden_size=512, num_layers=6, num_heads=16, ffn_size=2048)
    with pytest.raises(UserError, match="integer multiple"):
        grow(source, spec, GrowthSpec(width_method="exact"))
    result = grow(source, spec, GrowthSpec(width_method="fpi"), dtype=torch.float64)
    err = measure_preservation(result.source_discriminator, result.models.discriminator, result.hidden_index, batch)
    assert 1e-6 < err.hidden_rel_l2 < 1.0  # post-LN makes uneven duplication inexact; the value is recorded
    assert result.record["width_method"].startswith("fpi") and "approximate" in result.record["width_method"]


def test_same_seed_same_bits_other_seed_other_noise(source, batch):
    from peer.growth import grow_discriminator_state
    from peer.growth.grow import target_dims
    from peer.growth.layout import dims_from_hf_config

    src, tgt = dims_from_hf_config(source.config), target_dims(SMALL)
    kw = dict(width_method="exact", depth_method="stack", noise=0.01)
    a = grow_discriminator_state(source.state, src, tgt, seed=5, **kw).grown.state
    b = grow_discriminator_state(source.state, src, tgt, seed=5, **kw).grown.state
    c = grow_discriminator_state(source.state, src, tgt, seed=6, **kw).grown.state
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["encoder.layer.0.attention.self.query.weight"], c["encoder.layer.0.attention.self.query.weight"]
    )


def test_target_positions_are_the_sources_first_rows(source, batch):
    """A target with fewer positions than the source keeps the source's first rows (repeated along hidden, shared
    with the generator) and stays exact; one with more is refused with one line."""
    spec = ModelSpec(hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072, max_position_embeddings=128)
    result = grow(source, spec, GrowthSpec(), dtype=torch.float64)
    disc, gen = result.models.discriminator, result.models.generator
    assert disc.config.max_position_embeddings == gen.config.max_position_embeddings == 128
    table = disc.electra.embeddings.position_embeddings.weight
    src_rows = source.state["embeddings.position_embeddings.weight"][:128]
    torch.testing.assert_close(table, src_rows.repeat(1, 2), rtol=0, atol=0)
    assert gen.electra.embeddings.position_embeddings.weight is table
    err = measure_preservation(result.source_discriminator, disc, result.hidden_index, batch)
    assert err.hidden_rel_l2 < 1e-10 and err.logits_rel_l2 < 1e-10
    with pytest.raises(UserError, match="exceeds the source's 512") as e:
        grow(source, ModelSpec(hidden_size=768, num_layers=6, num_heads=24, max_position_embeddings=1024), GrowthSpec())
    assert "\n" not in str(e.value)
