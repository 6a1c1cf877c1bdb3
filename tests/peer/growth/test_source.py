"""resolve_source / load_source: the default package, local dirs, the hub path offline, and broken sources."""

import json
import shutil

import pytest

from peer.errors import UserError
from peer.growth import DEFAULT_SOURCE, load_source, resolve_source


def test_default_source_is_the_minilm_package():
    path = resolve_source(DEFAULT_SOURCE)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    src = load_source(path)
    assert src.model_type == "bert" and src.config["hidden_size"] == 384
    assert src.state["embeddings.word_embeddings.weight"].shape == (30522, 384)


def test_local_dir_resolves_to_itself(tmp_path):
    shutil.copytree(resolve_source(DEFAULT_SOURCE), tmp_path / "m")
    assert resolve_source(str(tmp_path / "m")) == tmp_path / "m"


def test_hub_id_offline_fails_with_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(UserError, match="Hugging Face hub") as e:
        resolve_source("google/electra-small-discriminator")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("breakage", ["missing", "no_config", "no_weights", "bad_json", "truncated", "gpt2"])
def test_broken_sources_raise_user_error(tmp_path, breakage):
    src = tmp_path / "m"
    shutil.copytree(resolve_source(DEFAULT_SOURCE), src)
    if breakage == "missing":
        shutil.rmtree(src)
    elif breakage == "no_config":
        (src / "config.json").unlink()
    elif breakage == "no_weights":
        (src / "model.safetensors").unlink()
    elif breakage == "bad_json":
        (src / "config.json").write_text("{not json")
    elif breakage == "truncated":
        data = (src / "model.safetensors").read_bytes()
        (src / "model.safetensors").write_bytes(data[: len(data) // 3])
    elif breakage == "gpt2":
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    with pytest.raises(UserError) as e:
        load_source(resolve_source(str(src)))
    assert "\n" not in str(e.value)
