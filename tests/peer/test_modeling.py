import torch

from peer.config import ModelSpec
from peer.modeling import build_models, load_models, save_models

TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_position_embeddings=64)


def test_generator_shares_embedding_tensors_with_discriminator():
    models = build_models(TINY, vocab_size=100, seed=0)
    d, g = models.discriminator.electra.embeddings, models.generator.electra.embeddings
    assert g is d
    assert models.generator.generator_lm_head.weight is d.word_embeddings.weight
    assert models.generator.config.hidden_size == 8 and models.generator.config.num_attention_heads == 1


def test_save_load_roundtrip_is_exact_and_retied(tmp_path):
    models = build_models(TINY, vocab_size=100, seed=0)
    save_models(models, tmp_path)
    loaded = load_models(tmp_path)
    for (n1, p1), (n2, p2) in zip(models.named_parameters(), loaded.named_parameters(), strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
    assert loaded.generator.generator_lm_head.weight is loaded.discriminator.electra.embeddings.word_embeddings.weight
