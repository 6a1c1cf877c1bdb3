"""The embedded default corpus: real English prose that arrives with ``pip install``, so a peer trains offline.

Source: the test data inside gensim's PyPI wheel (gensim is LGPL-2.1; the texts are third-party and are not copied into
this repository, only read where pip put them):
  * ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`` — a shortened English Wikipedia dump
    (206 pages, 107 articles after dropping redirects; Wikipedia text is CC BY-SA 3.0 / GFDL);
  * ``lee_background.cor`` — 300 news excerpts of the Lee, Pincombe & Welsh (2005) document-similarity corpus, one
    document a line. (``lee.cor``, the 50 rated documents, is left out so probes built on its ratings stay unseen.)
Wiki markup is stripped by gensim's own ``filter_wiki`` plus the clean-up below; every top-level article section and
every news item is one document. The result is materialised once as an Arrow ``datasets.Dataset`` in the HF
datasets cache, so later loads are memory-mapped and fast.
"""

from __future__ import annotations

import bz2
import importlib.util
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import datasets

from peer.errors import UserError
from peer.run.provenance import CORPUS_PACKAGE, NEWS_FILE, WIKI_DUMP

logger = logging.getLogger(__name__)

PACKAGE = CORPUS_PACKAGE
DESCRIPTION = "gensim wheel test data: shortened English Wikipedia dump (CC BY-SA 3.0) + Lee background news corpus"

# Part of the cache key: bump whenever the cleaning or document boundaries change (``datasets`` fingerprints a
# module-level generator by reference, not by its code, so an edit alone would keep serving the old cache).
CORPUS_VERSION = 2
# A paragraph shorter than this many words is a heading, caption, list or table remnant rather than prose.
MIN_PARAGRAPH_WORDS = 8

_HEADING = re.compile(r"^\s*=+.*=+\s*$")
_SECTION = re.compile(r"^==([^=].*?)==\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"'{2,}")
_LEFTOVER_MARKUP = re.compile(r"^\s*[|!{}*#:;]")
_SPACES = re.compile(r"[ \t]+")
_OPEN_PUNCT = re.compile(r"\(\s*(?:[,;]\s*)+")
_CLOSE_PUNCT = re.compile(r"(?:\s*[,;])+\s*\)")
_EMPTY_BRACKETS = re.compile(r"\s*\(\s*\)")


def test_data_dir() -> Path:
    """Where pip put gensim's test data; found without importing gensim (which pulls scipy)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded corpus needs the '{PACKAGE}' package (pip install {PACKAGE}); or set data.source to a "
            "local file/folder or a hub dataset id"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "test" / "test_data"
    for name in (WIKI_DUMP, NEWS_FILE):
        if not (path / name).is_file():
            raise UserError(f"the embedded corpus file {name} is missing from {path}; reinstall {PACKAGE}")
    return path


def clean_wiki_text(text: str) -> str:
    """Wikitext as gensim's ``filter_wiki`` leaves it -> plain paragraphs of prose separated by blank lines."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = [line for line in block.splitlines() if not _HEADING.match(line) and not _LEFTOVER_MARKUP.match(line)]
        paragraph = _EMPHASIS.sub("", " ".join(line.strip() for line in lines))
        paragraph = _CLOSE_PUNCT.sub(")", _OPEN_PUNCT.sub("(", paragraph))
        paragraph = _SPACES.sub(" ", _EMPTY_BRACKETS.sub("", paragraph)).strip()
        if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def split_sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for the lead and each top-level ``== Section ==`` of an article (sub-sections stay inside).

    Why sections and not whole articles: the dump has only ~100 articles of ~6k tokens each, so a per-document
    held-out split of a few percent would be a coin flip over two or three articles; sections are coherent units
    of prose (SOP pairs stay within one) and give the hash split ~1,000 documents to work with."""
    parts = _SECTION.split(text)
    sections = [("", parts[0])]
    sections += [(parts[i].strip(), parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    return sections


def iter_wiki_sections(dump: Path) -> Iterator[dict]:
    """One dict per prose section of each main-namespace article of a MediaWiki XML dump (redirects skipped)."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.open(dump) as f:
        for title, markup, _page_id in extract_pages(f, filter_namespaces=("0",)):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            for heading, body in split_sections(filter_wiki(markup)):
                text = clean_wiki_text(body)
                if text:
                    yield {"text": text, "title": f"{title}#{heading}" if heading else title, "origin": "wikipedia"}


def iter_news(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if line.strip():
                yield {"text": line.strip(), "title": f"lee_background-{i:03d}", "origin": "lee_news"}


def _generate(data_dir: str, version: int, files: str) -> Iterator[dict]:
    """``version`` and ``files`` (names, sizes, mtimes) are unused here: they key the ``datasets`` cache."""
    root = Path(data_dir)
    yield from iter_wiki_sections(root / WIKI_DUMP)
    yield from iter_news(root / NEWS_FILE)


def load_embedded() -> datasets.Dataset:
    """The embedded corpus as a ``datasets.Dataset`` with columns text, title, origin (one row = one document).

    Built on first use (a few seconds) and cached by ``datasets`` under a key of ``CORPUS_VERSION`` and the source
    files' sizes and mtimes, so a changed cleaning or a reinstalled gensim rebuilds it."""
    data_dir = test_data_dir()
    features = datasets.Features(
        {"text": datasets.Value("string"), "title": datasets.Value("string"), "origin": datasets.Value("string")}
    )
    files = ";".join(
        f"{n}:{(data_dir / n).stat().st_size}:{(data_dir / n).stat().st_mtime_ns}" for n in (WIKI_DUMP, NEWS_FILE)
    )
    kwargs = {"data_dir": str(data_dir), "version": CORPUS_VERSION, "files": files}
    logger.info("loading the embedded corpus (%s) from %s", DESCRIPTION, data_dir)
    return datasets.Dataset.from_generator(_generate, features=features, gen_kwargs=kwargs)
