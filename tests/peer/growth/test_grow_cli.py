"""``python -m peer grow``: a loadable model dir + growth.json on success; one line, exit 2, nothing written on bad
input."""

import json
import math

import pytest
import torch
from transformers import ElectraForMaskedLM, ElectraForPreTraining

from peer.__main__ import main
from peer.growth import DEFAULT_SOURCE, resolve_source
from peer.growth.artifact import sha256_file
from peer.modeling import load_models


def test_grow_writes_loadable_dir_and_record(tmp_path, capsys):
    out = tmp_path / "grown"
    rc = main(["grow", "--target", "hidden=768,layers=8,ffn=3072", "--objective", "electra", "--out", str(out),
               "--seed", "3", "--noise", "0.01"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    record = json.loads((out / "growth.json").read_text())
    assert record["seed"] == 3 and record["layer_map"] == [0, 1, 2, 3, 4, 5, 4, 5]
    assert record["width_preservation_fp64"]["hidden_rel_l2"] < 1e-10
    assert (
        0 < record["preservation_fp32"]["hidden_rel_l2"] < 10
    )  # stacking changes the function; the change is recorded
    # Stacking 6 -> 8 changes the step-0 held-out ELECTRA loss; both sides are measured on the same batches.
    before, after = record["step0_loss"]["before_depth_change"], record["step0_loss"]["after_depth_change"]
    for losses in (before, after):
        assert set(losses) == {"loss", "mlm_loss", "disc_loss"}
        assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert before["loss"] != after["loss"]
    for name, digest in record["sha256"].items():
        assert sha256_file(out / name) == digest
    # Plain transformers loads it, and our loader gives the same weights with the generator tied.
    plain = ElectraForPreTraining.from_pretrained(out)
    ElectraForMaskedLM.from_pretrained(out / "generator")
    models = load_models(out)
    for (name, a), b in zip(plain.state_dict().items(), models.discriminator.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    emb = models.discriminator.electra.embeddings.word_embeddings.weight
    assert models.generator.electra.embeddings.word_embeddings.weight is emb
    assert models.generator.generator_lm_head.weight is emb
    summary = capsys.readouterr().out
    assert "wrote" in summary and "step-0 held-out electra loss after depth change" in summary


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "hidden=192,layers=6,ffn=3072"], "narrower"),
        (["--target", "hidden=768,layers=4,ffn=3072"], "fewer"),
        (["--target", "hidden=512,layers=6,ffn=2048"], "integer multiple"),
        (["--target", "hidden=768,layers=6,ffn=3072,heads=10"], "not divisible"),
        (["--target", "hidden=768,layers=4,ffn=3072", "--objective", "albert"], "fewer"),
        (["--target", "hidden=768,bogus=3"], "bad --target"),
        (["--target", "hidden=768,layers=6,ffn=3072,positions=1024"], "exceeds the source's 512"),
        (["--source", "/nonexistent/model", "--target", "hidden=768,layers=6,ffn=3072"], "does not exist"),
    ],
)
def test_bad_input_one_line_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "grown"
    assert main(["grow", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_unknown_architectures_one_line_nothing_written(tmp_path, capsys):
    """A source of an architecture growth cannot map (GPT-2 here), and a target architecture that is not ELECTRA or
    ALBERT (from a run config)."""
    src = tmp_path / "src"
    src.mkdir()
    for f in resolve_source(DEFAULT_SOURCE).iterdir():
        if f.name != "config.json" and f.is_file():
            (src / f.name).symlink_to(f)
    config = json.loads((resolve_source(DEFAULT_SOURCE) / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    run_config = tmp_path / "run.yaml"
    run_config.write_text("model:\n  architecture: gpt2\n")
    for args, message in (
        (["--source", str(src), "--target", "hidden=768,layers=6,ffn=3072"], "gpt2"),
        (["-c", str(run_config)], "architecture"),
    ):
        out = tmp_path / "grown"
        assert main(["grow", *args, "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err
        assert not out.exists()


def test_corrupt_source_nothing_written(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
    (src / "model.safetensors").write_bytes(b"\x00" * 100)
    assert main(["grow", "--source", str(src), "--target", "hidden=768,layers=6,ffn=3072", "--out",
                 str(tmp_path / "grown")]) == 2  # fmt: skip
    assert "corrupt" in capsys.readouterr().err and not (tmp_path / "grown").exists()
