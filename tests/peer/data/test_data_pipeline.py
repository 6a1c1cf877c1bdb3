"""build_train_batches / build_heldout_batches end to end on small local corpora and on the embedded corpus."""

import itertools
import logging
from pathlib import Path

import torch
from data_corpus_helpers import documents, marker_words, write_jsonl

from peer.config import DataSpec
from peer.data import build_heldout_batches, build_train_batches
from peer.data.embedded import load_embedded
from peer.data.split import is_heldout

SEQ = 32


def corpus(tmp_path, tokenizer, n=120) -> DataSpec:
    path = write_jsonl(tmp_path / "docs.jsonl", documents(tokenizer, n))
    return DataSpec(source=str(path), seq_len=SEQ, heldout_fraction=0.2)


def take(it, n):
    return list(itertools.islice(it, n))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def marker_ids(batches, ids_of_markers):
    seen = set()
    for b in batches:
        seen |= set(b["input_ids"].unique().tolist()) & ids_of_markers
    return seen


def test_train_batches_have_the_contract_shapes_and_no_padding(tmp_path, tokenizer):
    spec = corpus(tmp_path, tokenizer)
    for objective in ("electra", "albert"):
        batch = next(build_train_batches(spec, tokenizer, 8, objective, shuffle_seed=0))
        expected = {"input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "word_start"}
        expected |= {"sentence_order_label"} if objective == "albert" else set()
        assert set(batch) == expected
        for name, t in batch.items():
            assert t.dtype == torch.long
            assert t.shape == ((8,) if name == "sentence_order_label" else (8, SEQ))
        assert (batch["input_ids"][:, 0] == tokenizer.cls_token_id).all()
        if objective == "electra":
            assert batch["attention_mask"].all(), "packed training blocks hold no padding"


def test_same_seed_same_batches_other_seed_other_order(tmp_path, tokenizer):
    spec = corpus(tmp_path, tokenizer)
    for objective in ("electra", "albert"):
        a = take(build_train_batches(spec, tokenizer, 4, objective, shuffle_seed=7), 12)
        b = take(build_train_batches(spec, tokenizer, 4, objective, shuffle_seed=7), 12)
        c = take(build_train_batches(spec, tokenizer, 4, objective, shuffle_seed=8), 12)
        assert all(same(x, y) for x, y in zip(a, b, strict=True))
        assert not all(same(x, y) for x, y in zip(a, c, strict=True))


def test_heldout_is_disjoint_from_train_and_stable(tmp_path, tokenizer):
    spec = corpus(tmp_path, tokenizer)
    markers = marker_words(tokenizer, 120)
    marker_ids_all = set(tokenizer.convert_tokens_to_ids(markers))
    expected_heldout = {
        tokenizer.convert_tokens_to_ids(m)
        for m, d in zip(markers, documents(tokenizer, 120), strict=True)
        if is_heldout(d, spec.heldout_fraction)
    }
    assert 10 <= len(expected_heldout) <= 40

    heldout = build_heldout_batches(spec, tokenizer, 4, "electra", max_batches=1000)
    assert marker_ids(heldout, marker_ids_all) == expected_heldout
    again = build_heldout_batches(spec, tokenizer, 4, "electra", max_batches=1000)
    assert len(again) == len(heldout) and all(same(x, y) for x, y in zip(again, heldout, strict=True))

    # Two epochs and a bit of training data: every train document appears, no held-out one ever does.
    train = take(build_train_batches(spec, tokenizer, 4, "electra", shuffle_seed=1), 2 * 3 * len(heldout) * 4 + 50)
    assert marker_ids(train, marker_ids_all) == marker_ids_all - expected_heldout


def test_training_stream_is_endless_and_reshuffles_each_epoch(tmp_path, tokenizer, caplog):
    docs = documents(tokenizer, 30)
    spec = DataSpec(source=str(write_jsonl(tmp_path / "d.jsonl", docs)), seq_len=SEQ, heldout_fraction=0.1)
    markers = set(tokenizer.convert_tokens_to_ids(marker_words(tokenizer, 30)))
    it = build_train_batches(spec, tokenizer, 2, "electra", shuffle_seed=3)
    epochs: list[list[int]] = [[]]
    caplog.set_level(logging.INFO, logger="peer.data.pipeline")
    while len(epochs) < 4:
        batch = next(it)
        if any("data epoch" in r.getMessage() for r in caplog.records):
            caplog.clear()
            epochs.append([])
        for row in batch["input_ids"].tolist():
            epochs[-1] += [t for t in row if t in markers and t not in epochs[-1]]
    first, second, third = epochs[:3]
    assert set(first) == set(second) == set(third) and len(first) >= 20
    assert first != second != third, "each epoch has its own document order"


def test_heldout_max_batches_and_last_short_batch(tmp_path, tokenizer):
    spec = corpus(tmp_path, tokenizer)
    capped = build_heldout_batches(spec, tokenizer, 4, "albert", max_batches=2)
    assert len(capped) == 2 and all(b["input_ids"].shape == (4, SEQ) for b in capped)
    everything = build_heldout_batches(spec, tokenizer, 1000, "albert", max_batches=5)
    assert len(everything) == 1 and everything[0]["sentence_order_label"].shape[0] < 1000


def test_embedded_corpus_is_real_prose_split_into_documents(tokenizer):
    ds = load_embedded()
    assert ds.num_rows >= 1000 and any("#" in t for t in ds["title"])
    texts = list(ds["text"])
    assert sum(map(len, texts)) > 2_500_000
    assert set(ds["origin"]) == {"wikipedia", "lee_news"}
    assert any(t.startswith("Anarchism is a political philosophy") for t in texts)
    assert not any("[[" in t or "{{" in t or "'''" in t for t in texts), "wiki markup left in the text"
    batch = next(build_train_batches(DataSpec(), tokenizer, 8, "electra", shuffle_seed=0))
    assert batch["input_ids"].shape == (8, 128) and batch["attention_mask"].all()
    assert build_heldout_batches(DataSpec(), tokenizer, 8, "albert", max_batches=1)[0]["input_ids"].shape[1] == 128


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_streaming_a_large_local_file_keeps_memory_bounded(tmp_path, tokenizer):
    small = write_jsonl(tmp_path / "warm.jsonl", documents(tokenizer, 20))
    next(build_train_batches(DataSpec(source=str(small), seq_len=64), tokenizer, 4, "electra", 0))  # lazy imports
    bodies = documents(tokenizer, 97, sentences=2)
    big = tmp_path / "big.txt"
    with big.open("w") as f:
        f.writelines(f"paragraph {i} {bodies[i % 97]}\n\n" for i in range(800_000))
    size_mib = big.stat().st_size / 2**20
    assert size_mib > 150

    before = _rss_mib()
    it = build_train_batches(DataSpec(source=str(big), seq_len=64), tokenizer, 16, "electra", shuffle_seed=0)
    next(it)
    after_first = _rss_mib()
    take(it, 100)
    assert after_first - before < 0.6 * size_mib, "the corpus must be streamed, not loaded"
    assert _rss_mib() - after_first < 16
