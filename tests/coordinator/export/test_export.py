"""``python -m coordinator export``: each form of a tiny checkpoint loads in a fresh process with plain transformers
(``trust_remote_code`` for the two that carry their code) and runs; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from export_fixtures import write_corpus_config, write_tiny_checkpoint
from huggingface_hub import ModelCard

from coordinator.export import FORMS, NOTE_FILE, ExportOptions, export
from coordinator.export.card import write_export_card
from peer.errors import UserError

ROOT = Path(__file__).resolve().parents[3]
OPTIONS = {"steps": 2, "batches": 2, "batch_size": 4, "fraction": 0.25}


@pytest.fixture(scope="module")
def electra(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The tiny ELECTRA checkpoint and its five exports with their model cards (made in this process as the CLI and the
    coordinator's background exporter make them: the CLI is tested separately)."""
    root = tmp_path_factory.mktemp("export")
    ckpt = write_tiny_checkpoint(root)
    config = write_corpus_config(root)
    outs = {}
    for form in FORMS:
        outs[form] = root / form
        export(ckpt, ExportOptions(form=form, config=str(config), **OPTIONS), outs[form], write_card=write_export_card)
    return ckpt, outs


def run_fresh(script: str, tmp_path: Path) -> dict:
    """Runs ``script`` in a new interpreter (only transformers, torch and the export dir: it imports nothing of
    warmswarm) and returns the JSON it prints last."""
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADERS = {
    "bf16": """
        m = AutoModelForPreTraining.from_pretrained(DIR, dtype=torch.bfloat16).eval()
        out = {"dtype": str(m.electra.encoder.layer[0].attention.self.query.weight.dtype),
               "logits": list(m(**x).logits.shape)}
    """,
    "int8": """
        m = AutoModelForPreTraining.from_pretrained(DIR, trust_remote_code=True).eval()
        ref = AutoModelForPreTraining.from_pretrained(SRC).eval()
        out = {"dtype": str(m.electra.encoder.layer[0].attention.self.query.weight.dtype),
               "embedding_dtype": str(m.electra.embeddings.word_embeddings.weight.dtype),
               "logits": list(m(**x).logits.shape), "max_diff": float((m(**x).logits - ref(**x).logits).abs().max())}
        base = AutoModel.from_pretrained(DIR, trust_remote_code=True).eval()
        out["base"] = list(base(**x).last_hidden_state.shape)
    """,
    "bert2bert": """
        m = EncoderDecoderModel.from_pretrained(DIR).eval()
        ids = m.generate(**x, max_new_tokens=4, do_sample=False)
        out = {"generated": ids.tolist(), "start": tok.cls_token_id,
               "cross": any("crossattention" in k for k in m.state_dict())}
    """,
    "pruned": """
        m = AutoModelForPreTraining.from_pretrained(DIR, trust_remote_code=True).eval()
        layers = m.electra.encoder.layer
        heads = [l.attention.self.query.out_features // l.attention.self.attention_head_size for l in layers]
        out = {"heads": heads, "logits": list(m(**x).logits.shape)}
    """,
    "distilled": """
        m = AutoModelForPreTraining.from_pretrained(DIR).eval()
        out = {"layers": m.config.num_hidden_layers, "logits": list(m(**x).logits.shape)}
    """,
}


@pytest.mark.parametrize("form", FORMS)
def test_each_form_loads_in_a_fresh_process_and_runs(electra, form, tmp_path):
    ckpt, outs = electra
    script = f"""
        import json, torch
        from transformers import AutoModel, AutoModelForPreTraining, AutoTokenizer, EncoderDecoderModel
        DIR, SRC = {str(outs[form])!r}, {str(ckpt)!r}
        tok = AutoTokenizer.from_pretrained(DIR)
        x = dict(tok(["the river ran past the old town."], return_tensors="pt"))
        with torch.no_grad():
{textwrap.indent(textwrap.dedent(LOADERS[form]), " " * 12)}
        print(json.dumps(out))
    """
    out = run_fresh(script, tmp_path)
    note = json.loads((outs[form] / NOTE_FILE).read_text())
    card = ModelCard.load(outs[form] / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and card.data.license == "apache-2.0"
    assert f"The `{form}` form of `ckpt-000040` (checkpoint, step 40)" in card.text and "global step 40" in card.text
    assert note["source"]["step"] == 40 and note["source"]["kind"] == "checkpoint" and note["form"] == form
    assert not list(outs[form].rglob("optimizer*")) and not (outs[form] / "training_state.json").exists()
    seq = 10  # [CLS] + 8 words + [SEP]
    if form == "bf16":
        assert out == {"dtype": "torch.bfloat16", "logits": [1, seq]}
    elif form == "int8":
        assert out["dtype"] == out["embedding_dtype"] == "torch.int8"
        assert out["logits"] == [1, seq] and out["base"] == [1, seq, 32]
        assert out["max_diff"] < 0.05  # the discriminator's logits after int8 weights and activations
    elif form == "bert2bert":
        generated = out["generated"][0]
        assert generated[0] == out["start"] and 2 <= len(generated) <= 5 and out["cross"]
    elif form == "pruned":
        assert sum(out["heads"]) == 12 == note["result"]["heads_after"]  # 16 heads, a quarter removed
        assert min(out["heads"]) >= 1 and out["logits"] == [1, seq]
    else:
        assert out == {"layers": 2, "logits": [1, seq]}
        assert note["result"]["layers_teacher"] == 4


def test_int8_weighs_at_most_40_percent_of_fp32(electra):
    ckpt, outs = electra
    fp32 = (ckpt / "model.safetensors").stat().st_size
    int8 = (outs["int8"] / "model.safetensors").stat().st_size
    assert int8 <= 0.40 * fp32, (int8, fp32)
    bf16 = (outs["bf16"] / "model.safetensors").stat().st_size
    assert 0.45 * fp32 < bf16 < 0.55 * fp32


def test_albert_int8_and_pruned_load_in_a_fresh_process(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path, arch="albert")
    config = write_corpus_config(tmp_path, arch="albert")
    for form in ("int8", "pruned"):
        export(ckpt, ExportOptions(form=form, config=str(config), **OPTIONS), tmp_path / form)
    for form in ("distilled", "bert2bert"):
        with pytest.raises(UserError, match="needs an ELECTRA source"):
            export(ckpt, ExportOptions(form=form), tmp_path / form)
        assert not (tmp_path / form).exists()
    script = f"""
        import json, torch
        from transformers import AutoModelForPreTraining, AutoTokenizer
        out = {{}}
        for form in ("int8", "pruned"):
            d = {str(tmp_path)!r} + "/" + form
            x = dict(AutoTokenizer.from_pretrained(d)(["a short test sentence."], return_tensors="pt"))
            m = AutoModelForPreTraining.from_pretrained(d, trust_remote_code=True).eval()
            with torch.no_grad():
                out[form] = list(m(**x).prediction_logits.shape)
            attn = m.albert.encoder.albert_layer_groups[0].albert_layers[0].attention
            out[form + "_heads"] = attn.query.out_features // attn.attention_head_size
        print(json.dumps(out))
    """
    out = run_fresh(script, tmp_path)
    assert out["int8"] == out["pruned"] == [1, 7, 30522]
    assert out["int8_heads"] == 4 and out["pruned_heads"] == 3  # ALBERT's one shared layer: 1 of 4 heads removed


def test_a_grown_dir_is_a_source_at_step_0_and_a_damaged_checkpoint_is_refused(tmp_path):
    grown = write_tiny_checkpoint(tmp_path)
    for name in ("training_state.json", "manifest.json", "optimizer.safetensors"):
        (grown / name).unlink()
    (grown / "growth.json").write_text(json.dumps({"sha256": {"model.safetensors": "ab" * 32}}))
    note = export(grown, ExportOptions(form="bf16"), tmp_path / "bf16")
    assert (note.source.kind, note.source.step, note.source.weights_sha256) == ("grown", 0, "ab" * 32)

    ckpt = write_tiny_checkpoint(tmp_path / "damaged")
    with (ckpt / "model.safetensors").open("r+b") as f:
        f.seek(-5, 2)
        f.write(b"xxxxx")
    with pytest.raises(UserError, match="does not match its manifest"):
        export(ckpt, ExportOptions(form="bf16"), tmp_path / "never")
    assert not (tmp_path / "never").exists() and not list(tmp_path.glob(".never.tmp-*"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing-dir", "--form", "bf16"], "SRC missing-dir is not a directory"),
        (["SRC", "--form", "fp4"], "unknown --form 'fp4'"),
        (["SRC", "--form", "pruned", "--fraction", "1.0"], "--fraction must be in (0, 1)"),
        (["SRC", "--form", "pruned", "--fraction", "0"], "--fraction must be in (0, 1)"),
        (["SRC", "--form", "distilled", "--student_layers", "0"], "--student_layers must be at least 1"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    argv = [str(src) if a == "SRC" else a for a in args]
    proc = subprocess.run([sys.executable, "-m", "coordinator", "export", *argv, "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"]
    assert message in proc.stderr and proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
