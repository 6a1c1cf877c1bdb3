"""The downstream tasks load offline from gensim's wheel, with fixed, disjoint, stratified splits."""

from coordinator.evaluation.tasks import (
    DEFAULT_TASKS,
    load_lee,
    load_newsgroups,
    load_polarity,
    load_tasks,
    split_by_hash,
    strip_newsgroup_post,
)


def test_classification_splits_are_fixed_stratified_and_disjoint():
    for load in (load_polarity, load_newsgroups):
        task = load()
        assert len(task.labels) == 2
        assert (len(task.train), len(task.test)) == (120, 80)
        for split in (task.train, task.test):
            assert sum(label for _, label in split) == len(split) // 2  # balanced
            assert all(text.strip() for text, _ in split)
        assert not {t for t, _ in task.train} & {t for t, _ in task.test}
        assert load() == task  # the same split every time


def test_newsgroup_posts_lose_header_quotes_and_signature():
    post = (
        "From: someone@example.com\nNewsgroups: sci.space\nSubject: Re: orbits\n\n"
        "In article <1@x> other@y writes:\n> quoted line\nThe shuttle flies low.\n--\nSomeone, Somewhere"
    )
    assert strip_newsgroup_post(post) == "The shuttle flies low."
    task = load_newsgroups()
    # every post had a header naming its group; a body may still mention one ("this is alt.atheism, after all")
    assert not any(text.startswith(("Path:", "From:", "Newsgroups:")) for text, _ in task.train + task.test)


def test_lee_pairs_never_cross_the_document_split():
    task = load_lee()
    assert len(task.texts) == 50
    train_docs = {i for p in task.train for i in p[:2]}
    test_docs = {i for p in task.test for i in p[:2]}
    assert (len(train_docs), len(test_docs)) == (30, 20) and not train_docs & test_docs
    assert len(task.train) == 30 * 29 // 2 and len(task.test) == 20 * 19 // 2
    assert all(0.0 <= r <= 1.0 for *_, r in task.train + task.test)


def test_split_by_hash_depends_on_the_text_only():
    items = [f"document {i}" for i in range(50)]
    train, test = split_by_hash(items, str)
    assert len(test) == 20 and sorted(train + test) == sorted(items)
    assert split_by_hash(list(reversed(items)), str)[1] == list(reversed(test))


def test_load_tasks_by_name():
    assert [t.info.name for t in load_tasks(list(DEFAULT_TASKS))] == ["polarity", "newsgroups", "lee"]
