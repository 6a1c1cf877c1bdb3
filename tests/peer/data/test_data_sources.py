"""Local jsonl / parquet / text-folder sources read back exactly, and every bad input as one clear UserError."""

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_corpus_helpers import documents, write_jsonl

from peer.config import DataSpec
from peer.data import build_heldout_batches, build_train_batches, check_seq_len
from peer.data.sources import iter_texts, open_source
from peer.errors import UserError


def read_back(spec: DataSpec) -> list[str]:
    ds, column = open_source(spec)
    return list(iter_texts(spec, ds, column))


def test_jsonl_with_a_custom_text_column(tmp_path, tokenizer):
    docs = documents(tokenizer, 12)
    spec = DataSpec(source=str(write_jsonl(tmp_path / "c.jsonl", docs, column="body")), text_column="body", seq_len=32)
    assert read_back(spec) == docs
    assert next(build_train_batches(spec, tokenizer, 4, "electra", 0))["input_ids"].shape == (4, 32)


def test_parquet_folder(tmp_path, tokenizer):
    docs = documents(tokenizer, 12)
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": docs[:5]}), tmp_path / "pq" / "part-0.parquet")
    pq.write_table(pa.table({"text": docs[5:]}), tmp_path / "pq" / "part-1.parquet")
    spec = DataSpec(source=str(tmp_path / "pq"), seq_len=32)
    assert read_back(spec) == docs
    assert next(build_train_batches(spec, tokenizer, 4, "albert", 0))["sentence_order_label"].shape == (4,)


def test_text_folder_one_document_per_blank_line_block(tmp_path, tokenizer):
    docs = documents(tokenizer, 9)
    folder = tmp_path / "txt"
    (folder / "nested").mkdir(parents=True)
    (folder / "a.txt").write_text("\n\n".join(docs[:4]) + "\n")
    (folder / "nested" / "b.txt").write_text("\n\n\n".join(d.replace(". ", ".\n", 1) for d in docs[4:]))
    (folder / ".hidden").write_bytes(b"\x00\x01 ignored")
    texts = read_back(DataSpec(source=str(folder)))
    assert texts[:4] == docs[:4]
    assert [t.replace("\n", " ") for t in texts[4:]] == docs[4:]


def test_missing_corpus(tmp_path, tokenizer):
    for source in (str(tmp_path / "nope.jsonl"), "./relative/missing"):
        with pytest.raises(UserError, match="corpus not found"):
            build_train_batches(DataSpec(source=source), tokenizer, 4, "electra", 0)


def test_empty_corpus_file_and_folder(tmp_path, tokenizer):
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    it = build_train_batches(DataSpec(source=str(tmp_path / "empty.txt")), tokenizer, 4, "electra", 0)
    with pytest.raises(UserError, match="yields no training batch"):
        next(it)
    with pytest.raises(UserError, match="no held-out documents"):
        build_heldout_batches(DataSpec(source=str(tmp_path / "empty.txt")), tokenizer, 4, "electra", 1)
    (tmp_path / "void").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        build_train_batches(DataSpec(source=str(tmp_path / "void")), tokenizer, 4, "electra", 0)


def test_binary_and_mislabelled_files(tmp_path, tokenizer):
    gz = tmp_path / "corpus.txt"
    gz.write_bytes(gzip.compress(b"some text " * 100))
    with pytest.raises(UserError, match="is not text"):
        build_train_batches(DataSpec(source=str(gz)), tokenizer, 4, "electra", 0)
    fake = tmp_path / "fake.parquet"
    fake.write_text("not parquet at all")
    with pytest.raises(UserError, match="is not a parquet file"):
        build_train_batches(DataSpec(source=str(fake)), tokenizer, 4, "electra", 0)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.txt").write_text("hello there")
    write_jsonl(mixed / "b.jsonl", ["hello"])
    with pytest.raises(UserError, match="mixes file formats"):
        build_train_batches(DataSpec(source=str(mixed)), tokenizer, 4, "electra", 0)


def test_missing_text_column(tmp_path, tokenizer):
    spec = DataSpec(source=str(write_jsonl(tmp_path / "c.jsonl", ["a b c"], column="body")))
    with pytest.raises(UserError, match="has no column 'text'.*body"):
        next(build_train_batches(spec, tokenizer, 4, "electra", 0))


def test_hub_dataset_unreachable_offline(tokenizer, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="could not be loaded from the Hugging Face hub") as e:
        build_train_batches(DataSpec(source="someone/some-corpus"), tokenizer, 4, "electra", 0)
    assert "\n" not in str(e.value)


def test_seq_len_and_argument_checks(tmp_path, tokenizer):
    check_seq_len(DataSpec(seq_len=512), 512)
    with pytest.raises(UserError, match="exceeds the model's 512 position embeddings"):
        check_seq_len(DataSpec(seq_len=1024), 512)
    with pytest.raises(UserError, match="too short"):
        check_seq_len(DataSpec(seq_len=4), 512)
    spec = DataSpec(source=str(write_jsonl(tmp_path / "c.jsonl", ["a b c"])))
    with pytest.raises(UserError, match="unknown objective"):
        build_train_batches(spec, tokenizer, 4, "gpt", 0)
    with pytest.raises(UserError, match="heldout_fraction"):
        build_heldout_batches(DataSpec(source=spec.source, heldout_fraction=0.0), tokenizer, 4, "electra", 1)


def test_wiki_sections_become_clean_documents():
    from peer.data.embedded import clean_wiki_text, split_sections

    text = (
        "'''Achilles''' (; , Akhilleus, ) was a hero of the Trojan War in Greek myth.\n\n"
        "==Birth==\n\n===Early years===\nHe was the son of Peleus and of the nymph Thetis, as the poems tell.\n\n"
        "| table row left over from the markup\n\n==Death==\nshort\n\nHe was killed near the end of the war by Paris."
    )
    sections = split_sections(text)
    assert [h for h, _ in sections] == ["", "Birth", "Death"]
    lead, birth, death = (clean_wiki_text(body) for _, body in sections)
    assert lead == "Achilles (Akhilleus) was a hero of the Trojan War in Greek myth."
    assert birth == "He was the son of Peleus and of the nymph Thetis, as the poems tell."
    assert death == "He was killed near the end of the war by Paris."
