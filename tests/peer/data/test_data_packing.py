"""Packing and SOP pairs on synthetic token streams, where every token id says which document and position it is."""

import random

import numpy as np
import pytest

from peer.data.packing import pack_documents, sentence_order_pairs
from peer.data.tokenize import SpecialTokens, TokenizedDoc, word_starts

SPECIAL = SpecialTokens(cls=101, sep=102, pad=0)
PERIOD = 1012


def make_doc(doc_index: int, n: int, word_len: int = 1) -> TokenizedDoc:
    """Token ids 1000*(doc+2) + position (unique and ordered); a new word every ``word_len`` pieces."""
    ids = np.arange(n, dtype=np.int64) + 1000 * (doc_index + 2)
    ws = (np.arange(n) % word_len == 0).astype(np.int8)
    return TokenizedDoc(ids, ws)


def test_word_starts_marks_first_piece_of_each_word():
    assert word_starts([0, 0, 1, 2, 2, 2, None]).tolist() == [1, 0, 1, 1, 0, 0, 0]


@pytest.mark.parametrize("lengths", [[5, 300, 7, 126, 1, 40], [126], [250, 2, 2]])
def test_packing_is_lossless_and_pads_only_the_last_block(lengths):
    seq_len = 128
    docs = [make_doc(i, n) for i, n in enumerate(lengths)]
    blocks = list(pack_documents(docs, seq_len, SPECIAL))
    for b in blocks:
        assert len(b.input_ids) == seq_len
        assert b.input_ids[0] == SPECIAL.cls
    for b in blocks[:-1]:
        assert b.attention_mask.all(), "only the very last block may hold padding"
        assert b.input_ids[-1] == SPECIAL.sep
    last = blocks[-1]
    n_real = int(last.attention_mask.sum())
    assert last.input_ids[n_real - 1] == SPECIAL.sep and (last.input_ids[n_real:] == SPECIAL.pad).all()

    # Bodies concatenated = documents joined by [SEP]: nothing lost, nothing repeated, boundaries marked.
    stream = np.concatenate([b.input_ids[1 : int(b.attention_mask.sum()) - 1] for b in blocks])
    expected = []
    for d in docs:
        if expected and len(np.concatenate(expected)) % (seq_len - 2) != 0:
            expected.append(np.array([SPECIAL.sep]))
        expected.append(d.ids)
    assert stream.tolist() == np.concatenate(expected).tolist()


def test_documents_are_separated_by_sep_inside_a_block():
    blocks = list(pack_documents([make_doc(0, 10), make_doc(1, 10), make_doc(2, 200)], 64, SPECIAL))
    first = blocks[0].input_ids
    assert first[11] == SPECIAL.sep and first[22] == SPECIAL.sep
    assert first[1] // 1000 == 2 and first[12] // 1000 == 3 and first[23] // 1000 == 4


def test_special_tokens_mask_and_word_start_never_on_special_tokens():
    blocks = list(pack_documents([make_doc(0, 90, word_len=3), make_doc(1, 20, word_len=2)], 64, SPECIAL))
    for b in blocks:
        special = np.isin(b.input_ids, (SPECIAL.cls, SPECIAL.sep, SPECIAL.pad))
        assert (b.special_tokens_mask == special).all()
        assert not (b.word_start[special]).any()
        assert (b.token_type_ids == 0).all()
        assert (b.attention_mask == (b.input_ids != SPECIAL.pad)).all()


def sop_blocks(docs, seq_len, prob, seed=0):
    return list(sentence_order_pairs(docs, seq_len, SPECIAL, prob, random.Random(seed), np.array([PERIOD])))


def segments(block):
    """(A, B, token types) of ``[CLS] A [SEP] B [SEP] [PAD]...``."""
    n = int(block.attention_mask.sum())
    ids = block.input_ids[:n].tolist()
    mid = ids.index(SPECIAL.sep)
    return ids[1:mid], ids[mid + 1 : n - 1], block.token_type_ids[:n].tolist(), mid


def test_sop_labels_match_the_order_of_the_segments():
    docs = [make_doc(i, n, word_len=2) for i, n in enumerate([40, 300, 61, 9, 125])]
    blocks = sop_blocks(docs, 64, 0.5)
    assert {b.sentence_order_label for b in blocks} == {0, 1}
    for b in blocks:
        a, bb, types, mid = segments(b)
        assert a and bb
        assert a[0] // 1000 == bb[0] // 1000, "both segments come from one document"
        first, second = (a, bb) if b.sentence_order_label == 0 else (bb, a)
        assert first + second == list(range(first[0], first[0] + len(first) + len(second))), "consecutive segments"
        assert types == [0] * (mid + 1) + [1] * (len(types) - mid - 1)
        assert len(b.input_ids) == 64
        assert b.word_start[1] == 1 and b.word_start[mid + 1] == 1, "segments start at a word start"


def test_sop_covers_each_document_once_in_order():
    doc = make_doc(0, 500, word_len=3)
    pieces = []
    for b in sop_blocks([doc], 64, 0.5):
        a, bb, _, _ = segments(b)
        pieces += a + bb if b.sentence_order_label == 0 else bb + a
    assert pieces == doc.ids.tolist()


@pytest.mark.parametrize("prob", [0.5, 0.2])
def test_sop_swap_rate_within_tolerance(prob):
    docs = [make_doc(i % 50, 200, word_len=2) for i in range(300)]
    labels = np.array([b.sentence_order_label for b in sop_blocks(docs, 32, prob, seed=3)])
    assert len(labels) > 2000
    tolerance = 5 * np.sqrt(prob * (1 - prob) / len(labels))
    assert abs(labels.mean() - prob) < tolerance


def test_sop_prefers_a_split_after_a_sentence_end():
    ids = np.arange(2000, 2040, dtype=np.int64)
    ids[19] = PERIOD
    doc = TokenizedDoc(ids, np.ones(40, dtype=np.int8))
    for seed in range(5):
        (block,) = sop_blocks([doc], 64, 0.0, seed=seed)
        a, _, _, _ = segments(block)
        assert a[-1] == PERIOD


def test_sop_skips_pieces_that_cannot_be_split():
    one_word = TokenizedDoc(np.arange(3000, 3005, dtype=np.int64), np.array([1, 0, 0, 0, 0], dtype=np.int8))
    assert sop_blocks([one_word], 64, 0.5) == []
