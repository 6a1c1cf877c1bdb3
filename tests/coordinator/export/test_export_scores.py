"""``coordinator evaluate EXPORT``: an export's downstream scores beside the checkpoint it was exported from, loaded
with this project's own classes (never the code the export carries), and bad requests refused in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_fixtures import write_corpus_config, write_tiny_checkpoint

from coordinator.evaluation.spec import EvaluationSpec, FinetuneBudget
from coordinator.export import ExportOptions, export
from coordinator.export.hf_code.modeling_int8 import Int8Linear
from coordinator.export.scores import evaluate_export, load_export_encoder
from peer.errors import UserError

REPO = Path(__file__).resolve().parents[3]
FROZEN = FinetuneBudget(steps=2, batch_size=4, max_length=32, train_layers=0)


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("scores")
    ckpt = write_tiny_checkpoint(root)
    config = write_corpus_config(root)
    outs = {}
    for form in ("int8", "bf16", "pruned"):
        outs[form] = root / form
        export(ckpt, ExportOptions(form=form, config=str(config), batches=1, batch_size=4, fraction=0.5), outs[form])
    return ckpt, outs


def _spec(budget: FinetuneBudget = FROZEN, references=("exported_from",)) -> EvaluationSpec:
    return EvaluationSpec(tasks=("lee", "polarity"), seeds=1, budget=budget, references=references)


def test_int8_scores_beside_its_checkpoint_on_the_int8_kernel(exports):
    ckpt, outs = exports
    report = evaluate_export(outs["int8"], _spec(), progress=lambda _: None)
    assert [m.role for m in report.models] == ["checkpoint", "exported_from"]
    assert report.models[1].name == str(ckpt) and report.step == 40
    int8_lee, fp32_lee = (m.task("lee").mean for m in report.models)
    # zero-shot similarity of mean-pooled features: int8 rounding moves it a little, never to another model's
    assert abs(int8_lee - fp32_lee) < 0.05, (int8_lee, fp32_lee)
    int8 = load_export_encoder(outs["int8"])
    assert sum(isinstance(m, Int8Linear) for m in int8.encoder.modules()) >= 4 * 6  # 4 layers x (q, k, v, o, in, out)
    assert report.models[0].encoder_parameters == report.models[1].encoder_parameters == int8.parameters


def test_bf16_is_the_checkpoint_rounded_to_bf16_and_computed_in_fp32(exports):
    ckpt, outs = exports
    from transformers import AutoModel

    fp32 = AutoModel.from_pretrained(ckpt)
    bf16 = load_export_encoder(outs["bf16"]).encoder
    for (name, a), (_, b) in zip(fp32.state_dict().items(), bf16.state_dict().items(), strict=True):
        if a.is_floating_point():
            assert b.dtype == torch.float32, name
            assert torch.equal(b, a.to(torch.bfloat16).float()), name


def test_the_code_an_export_carries_is_never_run(exports, tmp_path):
    _, outs = exports
    tampered = tmp_path / "int8"
    subprocess.run(["cp", "-r", str(outs["int8"]), str(tampered)], check=True)
    (tampered / "modeling_int8.py").write_text("raise SystemExit('carried code ran')\n")
    encoder = load_export_encoder(tampered).encoder
    assert any(isinstance(m, Int8Linear) for m in encoder.modules())


def test_pruned_evaluates_with_a_fine_tuned_top_layer(exports):
    _, outs = exports
    budget = FinetuneBudget(steps=2, batch_size=4, max_length=32, train_layers=1)
    report = evaluate_export(outs["pruned"], _spec(budget, references=()), progress=lambda _: None)
    assert [m.role for m in report.models] == ["checkpoint"]
    assert report.models[0].encoder_parameters < load_export_encoder(outs["bf16"]).parameters


@pytest.mark.parametrize(
    "form,budget,references,message",
    [
        ("int8", FinetuneBudget(train_layers=1), ("exported_from",), "--train-layers 0"),
        ("bf16", FROZEN, ("source",), "an export's reference is exported_from"),
    ],
)
def test_requests_an_export_cannot_answer_are_refused(exports, form, budget, references, message):
    _, outs = exports
    with pytest.raises(UserError, match=message):
        evaluate_export(outs[form], _spec(budget, references), progress=lambda _: None)


def test_cli_refuses_in_one_line_when_the_exported_from_checkpoint_is_gone(exports, tmp_path):
    _, outs = exports
    moved = tmp_path / "bf16"
    subprocess.run(["cp", "-r", str(outs["bf16"]), str(moved)], check=True)
    note = (moved / "export.json").read_text().replace(str(exports[0]), str(tmp_path / "gone"))
    (moved / "export.json").write_text(note)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "evaluate", str(moved), "--train-layers", "0", "--seeds", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is gone: use --references none" in result.stderr and len(result.stderr.strip().splitlines()) == 1
