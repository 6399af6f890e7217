import json

import numpy as np

from lcm.data import cache, corpora, tokenizers


def _corpus(texts):
    docs = [corpora.Document(f"d{i}", t) for i, t in enumerate(texts)]
    data = [(d.name, d.text.encode()) for d in docs]
    return corpora.Corpus(docs, {"corpus": "unit", "sha256": corpora._digest(data)})


def test_roundtrip_reads_every_document_and_range(tmp_path):
    texts = ["hello", "", "wörld!" * 50_000, "x"]  # one document spans several zarr chunks
    tok = tokenizers.ByteTokenizer()
    store = cache.tokenize_corpus(_corpus(texts), tok, tmp_path)
    assert store.created and store.names == ["d0", "d1", "d2", "d3"]
    flat = np.concatenate([tok.encode(t) for t in texts])
    np.testing.assert_array_equal(store.offsets, np.cumsum([0] + [len(t.encode()) for t in texts]))
    for i, text in enumerate(texts):
        got = store.document(i)
        assert got.dtype == np.int32
        np.testing.assert_array_equal(got, tok.encode(text))
    start, stop = cache.CHUNK_TOKENS - 3, cache.CHUNK_TOKENS + 5  # across a chunk boundary
    np.testing.assert_array_equal(store.read(start, stop), flat[start:stop])
    assert (store.path / "tokens" / ".zarray").is_file()
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["tokenizer"] == "byte" and meta["names"] == store.names
    assert store.manifest["tokens"] == len(flat) and store.manifest["tokenizer"] == "byte"


def test_cache_is_reused_and_keyed_by_content_and_tokenizer(tmp_path, monkeypatch):
    tok = tokenizers.ByteTokenizer()
    first = cache.tokenize_corpus(_corpus(["abc", "de"]), tok, tmp_path)
    calls = []
    monkeypatch.setattr(tok, "encode", lambda text: calls.append(text))  # must not be called
    again = cache.tokenize_corpus(_corpus(["abc", "de"]), tok, tmp_path)
    assert not again.created and again.path == first.path and not calls
    np.testing.assert_array_equal(again.document(1), [100, 101])
    monkeypatch.undo()
    changed = cache.tokenize_corpus(_corpus(["abc", "df"]), tok, tmp_path)
    assert changed.created and changed.path != first.path

    class Other(tokenizers.ByteTokenizer):
        fingerprint = "other"

    assert cache.tokenize_corpus(_corpus(["abc", "de"]), Other(), tmp_path).path != first.path
    assert not list(tmp_path.glob(".tmp-*"))  # temporary build directories are removed


def test_default_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.default_cache_dir() == tmp_path / "lcm" / "tokens"
