"""``python -m peer train`` end to end on the embedded corpus and tokenizer, with a tiny random-init model."""

import json

from peer.__main__ import main
from tests.peer.trainer.tiny_run import write_tiny_run


def write_config(tmp_path, **train):
    settings = {"total_steps": 3, "eval_every": 3, "eval_batches": 1, "checkpoint_every": 2}
    return write_tiny_run(tmp_path, "cli-test", **(settings | train))


def test_train_cli_runs_checkpoints_and_resumes(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["train", "-c", str(path), "--max_steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "done: step 2, 4 samples" in out
    ckpt = tmp_path / "run" / "checkpoints" / "ckpt-000002"
    assert json.loads((ckpt / "training_state.json").read_text()) == {"step": 2, "samples": 4, "run_id": "cli-test"}
    assert (ckpt / "tokenizer_config.json").is_file() and (ckpt / "generator" / "model.safetensors").is_file()
    assert main(["train", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert "done: step 3, 6 samples" in out and "resumed from" in out and "held-out:" in out and "disc_auc=" in out


def test_train_cli_bad_input_is_one_line(tmp_path, capsys):
    path = write_config(tmp_path)
    assert main(["train", "-c", str(path), "--set", "data.seq_len=512"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "position" in err and "\n" not in err
    assert main(["train", "-c", str(tmp_path / "missing.yaml")]) == 2
    assert main(["train", "-c", str(path), "--set", "train.init=/nonexistent/model"]) == 2
    assert "no model dir" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_cli_bad_corpus_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    (tmp_path / "blob.txt").write_bytes(bytes(range(256)) * 64)
    cases = {
        str(tmp_path / "missing.txt"): "corpus not found",
        str(tmp_path / "empty.txt"): "no held-out documents",
        str(tmp_path / "blob.txt"): "is not text",
        "someone/unreachable-corpus": "could not be loaded from the Hugging Face hub",
    }
    path = write_config(tmp_path)
    for source, reason in cases.items():
        assert main(["train", "-c", str(path), "--set", f"data.source={source}"]) == 2, source
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and reason in err and "\n" not in err, err
    assert not (tmp_path / "run").exists()
    # Checked before the initial model is grown into out_dir (no 400 MB written, no minute spent, for a typo).
    missing = str(tmp_path / "missing.txt")
    assert main(["train", "-c", str(path), "--set", f"data.source={missing}", "--set", "train.init=grow"]) == 2
    assert "corpus not found" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_cli_grows_at_the_schedules_step_and_keeps_the_heldout_loss(tmp_path, capsys):
    path = write_config(tmp_path, checkpoint_every=100)
    schedule = "growth.schedule=[{at_step: 2, model: {hidden_size: 64, num_heads: 4, ffn_size: 128}}]"
    assert main(["train", "-c", str(path), "--set", schedule]) == 0
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("grew at step 2: 32x2x64x1 -> 64x4x128x1")]
    before, after = (float(v) for v in line.split("held-out loss ")[1].split(" -> "))
    assert abs(after / before - 1) < 1e-3
    assert "done: step 3, 6 samples" in out
    assert (
        main(
            ["train", "-c", str(path), "--no_resume", "--set", schedule.replace("64, num_heads: 4", "48, num_heads: 3")]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "growth.schedule[0].model: hidden_size 48 is not an integer multiple of the previous stage's 32" in err
    assert "\n" not in err
