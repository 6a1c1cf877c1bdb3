"""``python -m peer train`` without a terminal (here: pytest's captured output) draws no bar and logs a progress line
every ``train.log_every`` steps and at the last one, and a line per checkpoint (issue #20)."""

import logging

import yaml

from peer.__main__ import main


def test_progress_lines_every_log_every_steps_and_no_bar(tmp_path, capsys, caplog):
    cfg = {
        "run_id": "progress-lines",
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "ffn_size": 64, "max_position_embeddings": 64},
        "data": {"seq_len": 32},
        "train": {
            "batch_size": 2,
            "total_steps": 5,
            "warmup_steps": 1,
            "eval_every": 100,
            "checkpoint_every": 4,
            "log_every": 2,
            "out_dir": str(tmp_path / "run"),
            "init": "random",
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with caplog.at_level(logging.INFO, logger="peer.cli.train"):
        assert main(["train", "-c", str(path)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "peer.cli.train"]
    progress = [line.split(":")[0] for line in lines if "samples/s" in line]
    assert progress == ["step 2/5", "step 4/5", "step 5/5"], lines
    assert all("loss " in line and "lr " in line for line in lines if "samples/s" in line)
    assert any(line.startswith("step 4 checkpoint: ") for line in lines)
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out and "train:" not in captured.err  # no tqdm bar
