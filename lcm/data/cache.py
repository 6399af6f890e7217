"""Tokenized-corpus cache: one flat token array plus document offsets, in tensorstore zarr.

A corpus is tokenized once per (content, tokenizer) pair and stored under
``<cache_dir>/<corpus>-<key>/``, ``key`` a hash of the manifest's ``sha256``, the tokenizer's
``fingerprint`` and ``CACHE_FORMAT``:

- ``tokens/``: zarr int32 ``[num_tokens]``, zstd-compressed chunks of ``CHUNK_TOKENS``;
- ``offsets/``: zarr int64 ``[num_documents + 1]``; document ``i`` is
  ``tokens[offsets[i]:offsets[i + 1]]``;
- ``meta.json``: document names, the corpus manifest and the tokenizer fingerprint. It is
  written last, and the directory is built under a temporary name and renamed into place, so a
  directory with ``meta.json`` is always complete (hosts racing on a shared disk keep the
  first).

Readers (``TokenizedCorpus.read``) fetch any token range through a shared in-memory chunk cache,
so grain reads documents by index without re-tokenizing or loading the whole array.

``cache_dir`` defaults to ``$XDG_CACHE_HOME/lcm/tokens`` (``~/.cache/lcm/tokens``): content-keyed
entries are shared by every run and workdir on the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np
import tensorstore as ts

from lcm.data.corpora import Corpus
from lcm.data.tokenizers import Tokenizer

CACHE_FORMAT = 1  # bump when the layout changes
CHUNK_TOKENS = 1 << 16  # zarr chunk length (tokens)
READ_CACHE_BYTES = 1 << 28  # decoded-chunk cache shared by all readers of this process

_CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": READ_CACHE_BYTES}})


def default_cache_dir() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "lcm" / "tokens"


def _spec(path: pathlib.Path, dtype: str, shape: int, chunk: int) -> dict[str, Any]:
    return {
        "driver": "zarr",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": {
            "shape": [shape],
            "chunks": [max(1, min(chunk, shape))],
            "dtype": dtype,
            "compressor": {"id": "zstd", "level": 3},
        },
        "create": True,
    }


def _write(path: pathlib.Path, array: np.ndarray, chunk: int) -> None:
    store = ts.open(_spec(path, array.dtype.str, len(array), chunk)).result()
    if len(array):
        store.write(array).result()


def _open(path: pathlib.Path) -> ts.TensorStore:
    spec = {"driver": "zarr", "kvstore": {"driver": "file", "path": str(path)}}
    return ts.open(spec, open=True, read=True, context=_CONTEXT).result()


class TokenizedCorpus:
    """A cached tokenized corpus: ``read(start, stop)`` any token range, ``document(i)``.

    Attributes:
      names: document names, in corpus order.
      offsets: int64 ``[num_documents + 1]``; document ``i`` spans ``offsets[i]:offsets[i+1]``.
      manifest: the corpus manifest plus ``tokenizer`` (fingerprint), ``tokens`` (count) and
        ``cache`` (directory) entries.
      created: whether this object tokenized the corpus (False: read from the cache).
    """

    def __init__(self, path: pathlib.Path, corpus: Corpus, tokenizer: Tokenizer, *, created: bool):
        self.path = path
        self.names: list[str] = json.loads((path / "meta.json").read_text())["names"]
        self.offsets = np.asarray(_open(path / "offsets").read().result(), dtype=np.int64)
        self._tokens = _open(path / "tokens")
        self.created = created
        self.manifest: dict[str, Any] = {
            **corpus.manifest,
            "tokenizer": tokenizer.fingerprint,
            "tokens": int(self.offsets[-1]),
            "cache": str(path),
        }

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.names)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens ``[start, stop)`` of the flat array, int32."""
        return np.asarray(self._tokens[int(start) : int(stop)].read().result(), dtype=np.int32)

    def document(self, index: int) -> np.ndarray:
        """All tokens of document ``index``, int32."""
        return self.read(self.offsets[index], self.offsets[index + 1])


def cache_key(corpus: Corpus, tokenizer: Tokenizer) -> str:
    text = json.dumps([CACHE_FORMAT, corpus.manifest["sha256"], tokenizer.fingerprint])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def tokenize_corpus(
    corpus: Corpus, tokenizer: Tokenizer, cache_dir: str | pathlib.Path | None = None
) -> TokenizedCorpus:
    """Returns the cached tokenization of ``corpus``, tokenizing and storing it on a miss."""
    cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    final = cache_dir / f"{corpus.manifest['corpus']}-{cache_key(corpus, tokenizer)}"
    if (final / "meta.json").is_file():
        return TokenizedCorpus(final, corpus, tokenizer, created=False)
    encoded = [tokenizer.encode(doc.text) for doc in corpus.documents]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    tokens = np.concatenate(encoded).astype(np.int32) if encoded else np.zeros(0, np.int32)
    tmp = cache_dir / f".tmp-{final.name}-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        _write(tmp / "tokens", tokens, CHUNK_TOKENS)
        _write(tmp / "offsets", offsets, CHUNK_TOKENS)
        meta = {
            "names": [d.name for d in corpus.documents],
            "manifest": corpus.manifest,
            "tokenizer": tokenizer.fingerprint,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first; keep its copy
            if not (final / "meta.json").is_file():
                raise
            return TokenizedCorpus(final, corpus, tokenizer, created=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TokenizedCorpus(final, corpus, tokenizer, created=True)
