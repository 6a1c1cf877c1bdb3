import pytest
from data_corpus_helpers import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()
