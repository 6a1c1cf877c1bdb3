"""``python -m peer train`` without a terminal (here: pytest's captured output) draws no bar and logs a progress line
every ``train.log_every`` steps and at the last one, and a line per checkpoint (issue #20)."""

import logging

from peer.__main__ import main
from tests.peer.trainer.tiny_run import write_tiny_run


def test_progress_lines_every_log_every_steps_and_no_bar(tmp_path, capsys, caplog):
    path = write_tiny_run(tmp_path, "progress-lines", total_steps=5, eval_every=100, checkpoint_every=4, log_every=2)
    with caplog.at_level(logging.INFO, logger="peer.cli.train"):
        assert main(["train", "-c", str(path)]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "peer.cli.train"]
    progress = [line.split(":")[0] for line in lines if "samples/s" in line]
    assert progress == ["step 2/5", "step 4/5", "step 5/5"], lines
    assert all("loss " in line and "lr " in line for line in lines if "samples/s" in line)
    assert any(line.startswith("step 4 checkpoint: ") for line in lines)
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out and "train:" not in captured.err  # no tqdm bar
