"""Growth into ALBERT on trained weights: BERT (MiniLM) -> ALBERT and ALBERT -> wider ALBERT are exact at source depth
(fp64 < 1e-10, fp32 < 1e-5; eager and SDPA; padding and token types; hidden chunks, MLM and SOP logits); the shared
layer's depth change is measured; the grown dir loads with plain ``transformers``."""

import pytest
import torch
from transformers import AlbertForPreTraining, AutoTokenizer

from peer.config import GrowthSpec, ModelSpec
from peer.growth import DEFAULT_SOURCE, grow, load_source, resolve_source
from peer.growth.verify import measure_preservation, probe_batch

BERT_TO_ALBERT = ModelSpec(architecture="albert", hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072)


@pytest.fixture(scope="module")
def minilm():
    return load_source(resolve_source(DEFAULT_SOURCE))


@pytest.fixture(scope="module")
def batch():
    return probe_batch(AutoTokenizer.from_pretrained(resolve_source(DEFAULT_SOURCE)))


def _assert_exact(result, batch, tol: float, attn: str = "sdpa") -> None:
    src, tgt = result.source_discriminator, result.models.discriminator
    src.set_attn_implementation(attn)
    tgt.set_attn_implementation(attn)
    err = measure_preservation(src, tgt, result.hidden_index, batch)
    assert err.hidden_rel_l2 < tol and err.logits_rel_l2 < tol and err.sop_logits_rel_l2 < tol, err
    with torch.no_grad():
        s, t = src(**batch, output_hidden_states=True), tgt(**batch, output_hidden_states=True)
    k = tgt.config.hidden_size // src.config.hidden_size
    for hs, ht in zip(s.hidden_states[1:], t.hidden_states[1:], strict=True):  # [0] is the embedding output (E)
        for chunk in ht.split(src.config.hidden_size, dim=-1)[:k]:
            torch.testing.assert_close(chunk, hs, rtol=0, atol=tol * max(1.0, float(hs.abs().max())))


@pytest.fixture(scope="module")
def bert_to_albert64(minilm):
    return grow(minilm, BERT_TO_ALBERT, GrowthSpec(), dtype=torch.float64, keep_source_depth=True)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_bert_to_albert_exact_fp64(bert_to_albert64, batch, attn):
    result = bert_to_albert64
    _assert_exact(result, batch, 1e-10, attn)
    model = result.models.discriminator
    assert model.config.embedding_size == 384  # E kept
    proj = model.albert.encoder.embedding_hidden_mapping_in
    torch.testing.assert_close(proj.weight, torch.cat([torch.eye(384), torch.eye(384)]).double(), rtol=0, atol=0)
    assert not proj.bias.any()


def test_bert_to_albert_exact_fp32_and_shared_layer_change_measured(minilm, batch):
    _assert_exact(grow(minilm, BERT_TO_ALBERT, GrowthSpec(), dtype=torch.float32, keep_source_depth=True), batch, 1e-5)
    shared = grow(minilm, BERT_TO_ALBERT, GrowthSpec(), dtype=torch.float64)
    model = shared.models.discriminator
    assert model.config.num_hidden_groups == 1 and model.config.num_hidden_layers == 6
    assert shared.record["layer_map"] == ["mean"]
    err = measure_preservation(shared.source_discriminator, model, shared.hidden_index, batch)
    assert err.hidden_rel_l2 > 0.1  # one shared layer cannot compute six distinct ones; the change is recorded


@pytest.fixture(scope="module")
def albert_source(minilm, tmp_path_factory):
    """A trained-weights ALBERT source with a factorised embedding (E 384 < hidden 768) and a generic projection:
    MiniLM grown into ALBERT, its projection and MLM head perturbed (seeded) so no structure hides a bug, saved."""
    model = grow(minilm, BERT_TO_ALBERT, GrowthSpec(), dtype=torch.float32).models.discriminator
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (model.albert.encoder.embedding_hidden_mapping_in.weight, model.predictions.dense.weight):
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        model.predictions.LayerNorm.weight.fill_(1.0)
    path = tmp_path_factory.mktemp("albert_source")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(resolve_source(DEFAULT_SOURCE)).save_pretrained(path)
    return load_source(path)


@pytest.fixture(scope="module")
def wider_albert64(albert_source):
    spec = ModelSpec(architecture="albert", hidden_size=1536, num_layers=6, num_heads=48, ffn_size=6144)
    return grow(albert_source, spec, GrowthSpec(), dtype=torch.float64)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_albert_to_wider_albert_exact(albert_source, wider_albert64, batch, attn):
    assert albert_source.model_type == "albert"
    result = wider_albert64
    assert result.record["layer_map"] == [0]  # the source's shared layer, copied
    _assert_exact(result, batch, 1e-10, attn)
    src_proj = albert_source.state["embeddings_project.weight"]
    tgt_proj = result.models.discriminator.albert.encoder.embedding_hidden_mapping_in.weight
    torch.testing.assert_close(tgt_proj, src_proj.repeat(2, 1), rtol=0, atol=0)  # E kept: rows expanded only


def test_grown_albert_dir_loads_with_plain_transformers(tmp_path, batch):
    """Through the CLI from the default (BERT) source, 2x wide and 6 -> 8 layers: ALBERT sources are covered above
    in memory; a 1536-wide target here cost 4x the time for nothing the dir-loading check needs."""
    from peer.__main__ import main

    out = tmp_path / "grown"
    args = ["grow", "--objective", "albert", "--out", str(out), "--target", "hidden=768,layers=8,ffn=3072"]
    assert main(args) == 0
    import json

    record = json.loads((out / "growth.json").read_text())
    assert record["width_preservation_fp64"]["hidden_rel_l2"] < 1e-10
    before, after = record["step0_loss"]["before_depth_change"], record["step0_loss"]["after_depth_change"]
    assert set(before) == {"loss", "mlm_loss", "sop_loss"} and before != after
    plain = AlbertForPreTraining.from_pretrained(out).eval()
    assert plain.config.num_hidden_layers == 8 and plain.config.num_hidden_groups == 1
    with torch.no_grad():
        assert torch.isfinite(plain(**batch).prediction_logits).all()
