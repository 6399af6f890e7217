"""Tokenizers: the byte-level default and optional SentencePiece / Hugging Face files.

``config.data.tokenizer`` selects one:

- ``"byte"`` (default, nothing to download): token id = UTF-8 byte value, ``vocab_size = 256``,
  no special tokens. Document boundaries are never spelled with tokens: they travel as
  ``segment_ids`` and per-document ``positions`` (``lcm.data.packing``), and padding is
  recognised by ``segment_ids == 0`` / ``loss_mask == 0`` (its token id is 0, a NUL byte that is
  never trained on). ``config.model.vocab_size`` must therefore be at least 256.
- ``path/to/*.model``: a SentencePiece model (needs ``pip install sentencepiece``).
- ``path/to/tokenizer.json`` (any ``*.json``): a Hugging Face ``tokenizers`` file (needs
  ``pip install tokenizers``). Encoded without added special tokens.

The two optional packages are imported only when such a file is given, so lcm does not depend
on them. Every tokenizer has a ``fingerprint`` (the file's SHA-256 for file tokenizers) that
keys the tokenized-corpus cache (``lcm.data.cache``).
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Protocol

import numpy as np

BYTE_VOCAB_SIZE = 256
SUFFIXES = (".model", ".json")  # a SentencePiece model, a Hugging Face tokenizer.json


class Tokenizer(Protocol):
    """What the data pipeline needs from a tokenizer."""

    vocab_size: int  # ids are in [0, vocab_size)
    fingerprint: str  # identifies the exact vocabulary (cache key)

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as an int32 vector, without special tokens."""
        ...

    def decode(self, ids: np.ndarray) -> str:
        """Text of ``ids``."""
        ...


class ByteTokenizer:
    """UTF-8 bytes as tokens: id ``b`` is byte ``b``; 256 ids, no special tokens."""

    vocab_size = BYTE_VOCAB_SIZE
    fingerprint = "byte"

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

    def decode(self, ids: np.ndarray) -> str:
        ids = np.asarray(ids)
        if ids.size and (ids.min() < 0 or ids.max() >= BYTE_VOCAB_SIZE):
            raise ValueError(
                f"byte tokenizer: ids must be in [0, 256), got {ids.min()}..{ids.max()}"
            )
        return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def _file_sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _require(module: str, package: str, path: pathlib.Path):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"config.data.tokenizer = {str(path)!r} needs the {package!r} package, which is not "
            f"installed; run `pip install {package}` or use config.data.tokenizer = 'byte'"
        ) from None


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` file (lazy ``sentencepiece`` import)."""

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        spm = _require("sentencepiece", "sentencepiece", path)
        self._sp = spm.SentencePieceProcessor(model_file=str(path))
        self.vocab_size = int(self._sp.vocab_size())
        self.fingerprint = f"sentencepiece:{_file_sha256(path)}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._sp.encode(text), dtype=np.int32)

    def decode(self, ids: np.ndarray) -> str:
        return self._sp.decode([int(i) for i in ids])


class HuggingFaceTokenizer:
    """A Hugging Face ``tokenizer.json`` file (lazy ``tokenizers`` import)."""

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        tokenizers = _require("tokenizers", "tokenizers", path)
        self._tok = tokenizers.Tokenizer.from_file(str(path))
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        self.fingerprint = f"huggingface:{_file_sha256(path)}"

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

    def decode(self, ids: np.ndarray) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


def load_tokenizer(spec: str) -> Tokenizer:
    """``"byte"``, a SentencePiece ``*.model`` or a Hugging Face ``*.json`` file path.

    Raises:
      ValueError: ``spec`` is neither ``"byte"`` nor an existing ``.model`` / ``.json`` file.
      ImportError: the file needs ``sentencepiece`` / ``tokenizers`` and it is not installed.
    """
    if spec == "byte":
        return ByteTokenizer()
    path = pathlib.Path(str(spec)).expanduser()
    if path.suffix not in SUFFIXES or not path.is_file():
        raise ValueError(
            f"config.data.tokenizer = {spec!r}: allowed: 'byte', an existing SentencePiece "
            "*.model file or an existing Hugging Face tokenizer.json (*.json) file"
        )
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    return HuggingFaceTokenizer(path)
