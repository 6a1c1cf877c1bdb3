"""The model card of a checkpoint or of anything derived from one: ``peer.run.model_card`` (source model and
licence as ``base_model``, growth, training, data attribution, how to load it) with the coordinator's evaluation
(``coordinator.evaluation``) on top: the checkpoint's scores become the card's ``model-index``, and a section shows
them beside the references (the source model, random init).

Why two modules: ``peer grow`` writes a card too and ``peer`` never imports ``coordinator``; everything that needs no
evaluation is therefore in ``peer.run.model_card``, and this module only adds what the coordinator measured.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard

from coordinator.evaluation.results import ROLE_TITLES, EvaluationReport, summary_rows
from coordinator.evaluation.spec import CHECKPOINT
from peer.run import model_card
from peer.run.model_card import CARD_FILE, TrainingSummary, read_training_summary, source_info

__all__ = ["CARD_FILE", "TrainingSummary", "build_model_card", "read_training_summary", "source_info",
           "write_model_card"]  # fmt: skip

METRIC_IDS = {"accuracy": "accuracy", "spearman": "spearmanr", "pearson": "pearsonr"}  # the Hub's metric ids


def build_model_card(model_dir: str | Path, *, evaluation: EvaluationReport | None = None, **kwargs) -> ModelCard:
    """``peer.run.model_card.build_model_card`` (same keyword arguments) with ``evaluation``'s checkpoint scores as
    the ``model-index`` and its section (or one saying how to evaluate). Raises UserError if the dir is not a model
    dir."""
    return model_card.build_model_card(
        model_dir, eval_results=_eval_results(evaluation), evaluation_section=_evaluation_section(evaluation), **kwargs
    )


def write_model_card(model_dir: str | Path, **kwargs) -> Path:
    """Writes ``README.md`` into ``model_dir`` (replacing one there); same arguments as ``build_model_card``."""
    return model_card.write_card(model_dir, build_model_card(model_dir, **kwargs))


def _eval_results(report: EvaluationReport | None) -> list[EvalResult]:
    model = report.model(CHECKPOINT) if report else None
    if model is None:
        return []
    return [
        EvalResult(
            task_type=t.task_type,
            task_name=t.title,
            dataset_type=t.task,
            dataset_name=t.dataset,
            dataset_split="test",
            metric_type=METRIC_IDS.get(t.metric, t.metric),
            metric_value=round(t.mean, 4),
            metric_name=f"{t.metric} (mean of {len(t.scores)} seeds, sd {t.sd:.4f})",
        )
        for t in model.tasks
    ]


def _evaluation_section(report: EvaluationReport | None) -> str:
    if report is None:
        return "## Evaluation\n\nNot evaluated yet (`python -m coordinator evaluate CKPT`)."
    b = report.budget
    header, rows = summary_rows(report)
    table = [f"| {' | '.join(header)} |", "|" + "---|" * len(header)] + [f"| {' | '.join(r)} |" for r in rows]
    names = "; ".join(f"{ROLE_TITLES.get(m.role, m.role)}: `{m.name}`" for m in report.models)
    return "\n".join(
        [
            "## Evaluation",
            "",
            f"Downstream tasks fine-tuned with {len(report.seeds)} seeds (mean ± sd over seeds), {b.steps} steps of "
            f"{b.batch_size}, max length {b.max_length}, the top {b.train_layers} encoder layer(s) and a head trained; "
            f"held-out rows: the pretraining objective on the run's held-out split. Models: {names}.",
            "",
            *table,
            "",
            "Each task's data ships in gensim's wheel (`gensim/test/test_data`); see `coordinator/evaluation/tasks.py`"
            " for the fixed splits. " + " ".join(f"{t.task}: {t.title}, {t.dataset}." for t in report.models[0].tasks),
        ]
    )
