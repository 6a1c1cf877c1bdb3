import itertools

import torch

from peer.config import ModelSpec, RunConfig
from peer.modeling import build_models, load_models
from peer.objectives import build_objective
from peer.trainer import checkpoint_dirs, train

VOCAB = 300


def batches(seed: int, bsz: int = 4, seq_len: int = 24):
    """An endless, seeded stream of Batch-contract dicts (what ``peer.data.build_train_batches`` yields)."""
    g = torch.Generator().manual_seed(seed)
    for _ in itertools.count():
        ids = torch.randint(200, VOCAB, (bsz, seq_len), generator=g)
        ids[:, 0], ids[:, -1], ids[:, 11] = 101, 102, 102
        special = ((ids == 101) | (ids == 102)).long()
        types = torch.zeros_like(ids)
        types[:, 12:] = 1
        yield {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "token_type_ids": types,
            "special_tokens_mask": special,
            "word_start": torch.ones_like(ids),
            "sentence_order_label": torch.randint(2, (bsz,), generator=g),
        }


def setup(arch: str, out_dir, optimizer: str = "adamw"):
    cfg = RunConfig()
    cfg.model = ModelSpec(
        architecture=arch, hidden_size=32, num_layers=2, num_heads=4, ffn_size=64, max_position_embeddings=32
    )
    cfg.objective.name = arch
    cfg.train.batch_size, cfg.train.grad_accum, cfg.train.optimizer = 4, 2, optimizer
    cfg.train.lr, cfg.train.warmup_steps, cfg.train.total_steps = 1e-3, 1, 4
    cfg.train.eval_every, cfg.train.checkpoint_every, cfg.train.out_dir = 2, 100, str(out_dir)
    return with_models(cfg)


def with_models(cfg: RunConfig):
    """``cfg``, the tiny pair it describes and their objective, the same for every call with the same ``cfg``."""
    torch.manual_seed(1234)  # dropout draws from the global RNG
    models = build_models(cfg.model, VOCAB, seed=0)
    return cfg, models, build_objective(cfg, models)


def params(models):
    return {n: p.detach().clone() for n, p in models.named_parameters()}


def test_resumed_run_is_bitwise_identical_to_a_straight_run(tmp_path):
    for arch, opt in (("electra", "adamw"), ("albert", "lamb")):
        cfg, straight_models, objective = setup(arch, tmp_path / f"{arch}-straight", opt)
        straight = train(cfg, straight_models, objective, batches(7))
        assert straight.state.step == 4 and straight.state.batches_consumed == 8

        cfg, models, objective = setup(arch, tmp_path / f"{arch}-resumed", opt)
        first = train(cfg, models, objective, batches(7), max_steps=2)
        assert first.state.step == 2 and len(checkpoint_dirs(cfg.train.out_dir)) == 1
        torch.manual_seed(999)  # a fresh process: different global RNG and fresh models until restored
        cfg, models2, objective2 = setup(arch, tmp_path / f"{arch}-resumed", opt)
        torch.manual_seed(999)
        second = train(cfg, models2, objective2, batches(7))
        assert second.resumed_from.endswith("ckpt-000002") and second.state.step == 4
        if arch == "electra":  # restoring a checkpoint copies into the live tensors: the embedding tie survives it
            shared = models2.discriminator.electra.embeddings
            assert models2.generator.electra.embeddings is shared
            assert models2.generator.generator_lm_head.weight is shared.word_embeddings.weight
        a, b = params(straight_models), params(models2)
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{arch}: {name} differs after resume"
        assert second.last_metrics == straight.last_metrics


def test_training_lowers_loss_and_checkpoints_load_in_plain_hf(tmp_path):
    cfg, models, objective = setup("electra", tmp_path)
    cfg.train.total_steps, cfg.train.warmup_steps, cfg.train.lr, cfg.train.grad_accum = 12, 2, 5e-3, 1
    cfg.train.eval_every, cfg.train.checkpoint_every = 3, 6
    fixed = next(batches(3))
    before = objective.evaluate([fixed])
    reports = []
    result = train(cfg, models, objective, itertools.repeat(fixed), [fixed], on_step=reports.append)
    assert [r.step for r in reports] == list(range(1, 13)) and reports[2].eval_metrics is not None
    assert result.eval_metrics["loss"] < before["loss"] - 1.0
    assert [p.rsplit("/", 1)[-1] for p in result.checkpoints] == ["ckpt-000006", "ckpt-000012"]
    loaded = load_models(result.checkpoints[-1])
    for (n, p), (_, q) in zip(models.named_parameters(), loaded.named_parameters(), strict=True):
        assert torch.equal(p, q), n
