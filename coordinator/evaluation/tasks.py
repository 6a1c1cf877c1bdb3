"""The downstream tasks: labelled data that ships inside gensim's PyPI wheel (``gensim/test/test_data``), so an
evaluation runs offline on any machine that can train, with fixed train/test splits.

* ``polarity`` — Pang & Lee sentence polarity (``pang_lee_polarity.cor``): 200 movie-review snippets, 100 positive
  and 100 negative; binary classification, accuracy.
* ``newsgroups`` — a 20 Newsgroups sample (``mini_newsgroup``, a zlib-compressed pickle of scikit-learn's ``Bunch``):
  200 posts, 100 from alt.atheism and 100 from sci.space; binary classification, accuracy. Headers, quoted lines and
  signatures are removed first, as scikit-learn's ``remove=("headers", "footers", "quotes")`` does: the header names
  the newsgroup, which would make the task a lookup.
* ``lee`` — Lee, Pincombe & Welsh (2005) document similarity (``lee.cor`` + ``similarities0-1.txt``): 50 news
  documents and the mean human similarity rating of each of their 1,225 pairs; Spearman correlation of the model's
  cosine similarity with the ratings. ``lee.cor`` is kept out of the embedded pretraining corpus
  (``peer.data.embedded``), so the pretrained model has not seen these documents.

Splits are by a stable hash of each text (``peer.data.split.heldout_score``): within each class of a classification
task, and by document for ``lee`` (a test pair has both documents in the test split, a training pair neither), so no
document of the test side is trained on. Nothing here imports torch (``split_by_hash`` imports ``peer.data`` when
first called).
"""

from __future__ import annotations

import importlib.util
import io
import pickle
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from peer.errors import UserError

PACKAGE = "gensim"
TEST_FRACTION = 0.4


@dataclass(frozen=True)
class TaskInfo:
    """What a task is, for tables, JSON and the model card's ``model-index``."""

    name: str  # the CLI's name
    title: str
    task_type: str  # the Hub's task id
    metric: str  # the headline metric (scores are in [0, 1] for accuracy, [-1, 1] for correlations)
    dataset: str  # where the data comes from


@dataclass(frozen=True)
class ClassificationTask:
    info: TaskInfo
    labels: tuple[str, ...]
    train: tuple[tuple[str, int], ...]  # (text, label index)
    test: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class SimilarityTask:
    """Texts and rated pairs of them: ``(i, j, rating)`` with ratings in [0, 1]."""

    info: TaskInfo
    texts: tuple[str, ...]
    train: tuple[tuple[int, int, float], ...]
    test: tuple[tuple[int, int, float], ...]


Task = ClassificationTask | SimilarityTask

POLARITY = TaskInfo(
    "polarity",
    "Sentiment (Pang & Lee sentence polarity)",
    "text-classification",
    "accuracy",
    "gensim test data: pang_lee_polarity.cor (Pang & Lee 2005)",
)
NEWSGROUPS = TaskInfo(
    "newsgroups",
    "Topic (20 Newsgroups: alt.atheism vs sci.space)",
    "text-classification",
    "accuracy",
    "gensim test data: mini_newsgroup (20 Newsgroups sample)",
)
LEE = TaskInfo(
    "lee",
    "Document similarity (Lee et al. 2005 human ratings)",
    "sentence-similarity",
    "spearman",
    "gensim test data: lee.cor + similarities0-1.txt (Lee, Pincombe & Welsh 2005)",
)
TASK_INFO = {t.name: t for t in (POLARITY, NEWSGROUPS, LEE)}


def test_data_dir() -> Path:
    """Where pip put gensim's test data; found without importing gensim (which pulls scipy)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the downstream tasks need the '{PACKAGE}' package (pip install {PACKAGE})")
    return Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"


def _read(name: str) -> bytes:
    path = test_data_dir() / name
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(f"task data {name} is missing from {path.parent} ({e.strerror}); reinstall {PACKAGE}") from None


def _text(raw: bytes) -> str:
    """These files predate UTF-8: Windows-1252 (em dashes, pound signs)."""
    return raw.decode("cp1252", errors="replace")


def split_by_hash(items: list, text_of, fraction: float = TEST_FRACTION) -> tuple[list, list]:
    """(train, test): the ``fraction`` of ``items`` whose text hashes lowest goes to test; each side keeps the
    input order. The same every time and on every machine."""
    from peer.data.split import heldout_score  # here: importing peer.data loads datasets and torch

    ranked = sorted(range(len(items)), key=lambda i: (heldout_score(text_of(items[i])), i))
    test = set(ranked[: round(len(items) * fraction)])
    return [x for i, x in enumerate(items) if i not in test], [x for i, x in enumerate(items) if i in test]


def _stratified(examples: list[tuple[str, int]], n_labels: int) -> tuple[tuple, tuple]:
    train, test = [], []
    for label in range(n_labels):
        tr, te = split_by_hash([e for e in examples if e[1] == label], lambda e: e[0])
        train += tr
        test += te
    return tuple(train), tuple(test)


def load_polarity() -> ClassificationTask:
    labels = ("neg", "pos")
    examples = []
    for line in _text(_read("pang_lee_polarity.cor")).splitlines():
        tag, _, text = line.strip().partition(" ")
        if text and tag.removeprefix("__label__") in labels:
            examples.append((text.strip(), labels.index(tag.removeprefix("__label__"))))
    return ClassificationTask(POLARITY, labels, *_stratified(examples, len(labels)))


class _BunchUnpickler(pickle.Unpickler):
    """Reads the 2016 pickle of a scikit-learn ``Bunch`` without scikit-learn, and refuses any other global: a
    pickle from a package's data directory should still not run arbitrary code."""

    _ALLOWED = {
        ("copy_reg", "_reconstructor"),
        ("__builtin__", "dict"),
        ("__builtin__", "object"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) == ("sklearn.datasets.base", "Bunch"):
            return dict
        if (module, name) not in self._ALLOWED:
            raise UserError(f"mini_newsgroup holds an unexpected object {module}.{name}")
        if module == "numpy.core.multiarray":  # numpy._core since numpy 2
            import numpy as np

            return (getattr(np, "_core", None) or np.core).multiarray._reconstruct
        return super().find_class(module, name)


_QUOTE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


def strip_newsgroup_post(text: str) -> str:
    """The body of a post without its header, quoted lines and signature (scikit-learn's three ``remove`` rules)."""
    _, _, body = text.partition("\n\n")
    body = "\n".join(line for line in body.split("\n") if not _QUOTE.search(line))
    lines = body.strip().split("\n")
    for cut in range(len(lines) - 1, -1, -1):
        if lines[cut].strip().strip("-") == "":
            break
    if cut > 0:
        lines = lines[:cut]
    return " ".join(" ".join(lines).split())


def load_newsgroups() -> ClassificationTask:
    try:
        bunch = _BunchUnpickler(io.BytesIO(zlib.decompress(_read("mini_newsgroup")))).load()
        labels = tuple(str(n) for n in bunch["target_names"])
        pairs = list(zip(bunch["data"], (int(t) for t in bunch["target"]), strict=True))
    except (zlib.error, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"unreadable mini_newsgroup in {test_data_dir()}: {e}") from None
    examples = [(body, label) for text, label in pairs if (body := strip_newsgroup_post(str(text)))]
    return ClassificationTask(NEWSGROUPS, labels, *_stratified(examples, len(labels)))


def load_lee() -> SimilarityTask:
    docs = [line.strip() for line in _text(_read("lee.cor")).splitlines() if line.strip()]
    rows = [line.split() for line in _read("similarities0-1.txt").decode().splitlines() if line.strip()]
    if len(rows) != len(docs) or any(len(r) != len(docs) for r in rows):
        raise UserError(f"lee.cor has {len(docs)} documents but similarities0-1.txt is not {len(docs)} x {len(docs)}")
    train_docs, _ = split_by_hash(list(range(len(docs))), lambda i: docs[i])
    side = {i: i in set(train_docs) for i in range(len(docs))}
    pairs = [(i, j, float(rows[i][j])) for i in range(len(docs)) for j in range(i + 1, len(docs))]
    train = tuple(p for p in pairs if side[p[0]] and side[p[1]])
    test = tuple(p for p in pairs if not side[p[0]] and not side[p[1]])
    return SimilarityTask(LEE, tuple(docs), train, test)


LOADERS = {"polarity": load_polarity, "newsgroups": load_newsgroups, "lee": load_lee}
DEFAULT_TASKS = tuple(LOADERS)


def load_tasks(names: list[str] | tuple[str, ...]) -> list[Task]:
    unknown = [n for n in names if n not in LOADERS]
    if unknown or not names:
        raise UserError(f"unknown task {unknown[0] if unknown else '(none)'!r} (known: {', '.join(LOADERS)})")
    return [LOADERS[n]() for n in dict.fromkeys(names)]
