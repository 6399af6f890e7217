"""Fixtures for the data tests: a small text corpus and configs that read it."""

import numpy as np
import pytest

from lcm import config as config_lib

# Document lengths in bytes: short ones that pack together, and long ones (> seq_len) that split.
DOC_LENGTHS = (1, 2, 3, 5, 8, 13, 21, 34, 55, 7, 40, 4, 17, 9, 30, 6)


def write_text_corpus(directory, lengths=DOC_LENGTHS, seed=0):
    """Writes one file per document; returns {name: text}, the name as ``text_corpus`` gives it."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    docs = {}
    for i, n in enumerate(lengths):
        text = "".join(chr(c) for c in rng.integers(ord("a"), ord("z") + 1, n))
        (directory / f"doc{i:02d}.txt").write_text(text)
        docs[f"{directory.name}/doc{i:02d}.txt"] = text
    return docs


@pytest.fixture
def text_docs(tmp_path):
    return write_text_corpus(tmp_path / "corpus")


@pytest.fixture
def make_config(tmp_path, text_docs):
    """A validated config on the text corpus; keyword overrides use ``a__b`` for ``a.b``."""

    def make(**overrides):
        config = config_lib.base_config()
        config.unlock()
        config.data.corpus = "text"
        config.data.path = str(tmp_path / "corpus")
        config.data.cache_dir = str(tmp_path / "cache")
        config.model.attention.impl = "xla"
        config.seq_len = 16
        config.data.batch_size = 4
        config.data.packing_bins = 4
        config.data.eval_fraction = 0.25
        config.update_from_flattened_dict({k.replace("__", "."): v for k, v in overrides.items()})
        return config_lib.validate(config)

    return make


# A tiny "repository" corpus for the recipe tests: file-level names, distinct letters per file so
# every token tells which file it came from.
REPO_FILES = {
    "a/x.py": "aaaaaaaaaa",  # 10
    "a/sub/y.py": "bbbbbbbbbbbbbbbbbbbb",  # 20
    "a/sub/z.py": "ccccc",  # 5
    "a/w.py": "dddddddddddddddd",  # 16
    "b/q.py": "eeeeeeeeeeeeeeeeeeeeeeeeeeeeee",  # 30
    "b/r.py": "fff",  # 3
    "c.py": "gggggggggggggggggggggggggggggggggggggggg",  # 40
    "d.py": "hhhhhhhh",  # 8
}


@pytest.fixture
def repo_store(tmp_path):
    """``REPO_FILES`` tokenized (byte tokenizer) through the cache; documents sorted by name."""
    from lcm.data import cache, corpora, tokenizers

    docs = [corpora.Document(n, t) for n, t in sorted(REPO_FILES.items())]
    sha = corpora._digest([(d.name, d.text.encode()) for d in docs])
    return cache.tokenize_corpus(
        corpora.Corpus(docs, {"corpus": "repo_unit", "sha256": sha}),
        tokenizers.ByteTokenizer(),
        tmp_path / "repo_cache",
    )
