"""Corpora: named lists of text documents with a manifest, and the held-out split.

A corpus is a ``Corpus(documents, manifest)``: ``documents`` a list of ``Document(name, text)``
sorted by name, ``manifest`` a JSON-able dict that identifies the exact content (its
``"sha256"`` keys the token cache) and is logged with every run. Corpora are registered in
``CORPORA`` under the names ``config.data.corpus`` uses; each entry is called with the
``config.data`` block. Synthetic tasks (passkey, RULER-style generators) register here too, in a
module that ``lcm/data/__init__.py`` imports (``lcm.data.checks`` validates ``config.data.corpus``
against ``CORPORA.names()``)::

    @CORPORA.register("passkey")
    def _passkey(data_config) -> Corpus: ...

Built in:

- ``stdlib``: the running Python's standard-library sources, a real code corpus present on every
  machine (reference notes §6). One document per top-level package (``asyncio``) or single-file
  module (``os``): its ``.py`` files in sorted path order, each preceded by a header line
  ``# FILE: asyncio/events.py``. Dropped (``DROPPED_DIRS``, at any depth): ``encodings`` and
  ``pydoc_data`` (data tables, not code); ``idlelib`` and every ``test``/``tests``/``idle_test``
  directory (distros such as Debian ship them separately, so dropping them makes the corpus
  nearly the same on every install); ``site-packages``/``dist-packages`` (not stdlib). The
  manifest records the Python version, file/document counts, bytes and a SHA-256 over every
  (path, file hash) pair; the corpus still differs between Python versions and distros.
- ``stdlib_files``: the same files, one document per file named by its path
  (``asyncio/events.py``; the same ``# FILE:`` header line), for recipes that need file-level
  structure (``lcm.data.recipes``: concat-by-repository, structured packing). Its manifest sets
  ``"split_by": "repository"``, so the held-out split still holds out whole packages.
- ``text``: ``config.data.path``, a file or a directory (every non-hidden file below it, sorted);
  one document per file, named by its path relative to ``path``'s parent.
- ``jsonl``: the same paths, one JSON object per line; the document text is the string field
  ``config.data.text_field``. Malformed lines (bad JSON, not an object, field missing or not a
  string) are skipped, counted in the manifest (``malformed_lines``, with the first few
  ``file:line`` references) and reported with a warning; blank lines are ignored.

The held-out split (``split_by_name``) is by document name, so for ``stdlib`` whole packages are
held out (random files would leak shared identifiers between the splits); with ``groups`` (the
``repository`` of each name) it holds out whole repositories of a file-level corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import sys
import sysconfig
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from lcm.registry import Registry

CORPORA = Registry("corpus")

DROPPED_DIRS = (
    "encodings",
    "pydoc_data",
    "idlelib",
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
)
MAX_REPORTED_MALFORMED = 5  # file:line references of malformed JSONL lines kept in the manifest


@dataclasses.dataclass(frozen=True)
class Document:
    name: str  # stable identifier; the held-out split hashes it
    text: str
    answer: str = ""  # synthetic task documents: the trailing part of ``text`` that answers


@dataclasses.dataclass(frozen=True)
class Corpus:
    documents: list[Document]  # sorted by name
    manifest: dict[str, Any]  # JSON-able; "sha256" identifies the content


def _digest(entries: Sequence[tuple[str, bytes]]) -> str:
    """SHA-256 over ``name\\0sha256(content)\\n`` lines, in the given order."""
    h = hashlib.sha256()
    for name, content in entries:
        h.update(f"{name}\0{hashlib.sha256(content).hexdigest()}\n".encode())
    return h.hexdigest()


def _decode(content: bytes) -> str:
    return content.decode("utf-8", errors="replace")


def stdlib_root() -> pathlib.Path:
    """The running interpreter's standard-library directory."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def _python_files(root: pathlib.Path) -> list[pathlib.PurePosixPath]:
    """Relative paths of the ``.py`` files below ``root``, skipping ``DROPPED_DIRS``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in DROPPED_DIRS]
        rel = pathlib.PurePosixPath(pathlib.Path(dirpath).relative_to(root).as_posix())
        found.extend(rel / f for f in filenames if f.endswith(".py"))
    return sorted(found, key=str)


def _stdlib_files(
    root: str | pathlib.Path | None, packages: Sequence[str] | None
) -> tuple[pathlib.Path, dict[str, list[tuple[str, bytes]]]]:
    """``(root, {package or module name: [(relative path, content), ...] in path order})``."""
    root = pathlib.Path(root) if root is not None else stdlib_root()
    groups: dict[str, list[tuple[str, bytes]]] = {}
    for rel in _python_files(root):
        name = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        if packages is None or name in packages:
            groups.setdefault(name, []).append((rel.as_posix(), (root / rel).read_bytes()))
    if packages is not None and (missing := sorted(set(packages) - set(groups))):
        raise ValueError(f"stdlib corpus: packages {missing} not found under {root}")
    if not groups:
        raise ValueError(f"stdlib corpus: no .py files under {root}")
    return root, groups


def _file_text(rel: str, content: bytes) -> str:
    text = _decode(content)
    return f"# FILE: {rel}\n{text}" + ("" if text.endswith("\n") else "\n")


def _stdlib_manifest(root, packages, groups, documents) -> dict[str, Any]:
    files = [f for name in sorted(groups) for f in groups[name]]
    return {
        "corpus": "stdlib",
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "root": str(root),
        "dropped_dirs": list(DROPPED_DIRS),
        "packages": None if packages is None else sorted(packages),
        "documents": len(documents),
        "files": len(files),
        "bytes": sum(len(c) for _, c in files),
        "sha256": _digest(files),
    }


def stdlib_corpus(
    root: str | pathlib.Path | None = None, *, packages: Sequence[str] | None = None
) -> Corpus:
    """Standard-library sources, one document per top-level package or single-file module.

    Args:
      root: the library directory; default ``stdlib_root()``.
      packages: keep only these document names (tests use a few); default all.

    Raises:
      ValueError: ``root`` holds no ``.py`` files, or a name in ``packages`` is not found.
    """
    root, groups = _stdlib_files(root, packages)
    documents = [
        Document(name, "".join(_file_text(rel, content) for rel, content in groups[name]))
        for name in sorted(groups)
    ]
    return Corpus(documents, _stdlib_manifest(root, packages, groups, documents))


def stdlib_files_corpus(
    root: str | pathlib.Path | None = None, *, packages: Sequence[str] | None = None
) -> Corpus:
    """The ``stdlib_corpus`` files, one document per file named by its relative path.

    Same arguments and errors as ``stdlib_corpus``. Single-file modules are named ``os.py``, so
    ``repository(name)`` gives the ``stdlib_corpus`` document (package) each file belongs to.
    """
    root, groups = _stdlib_files(root, packages)
    documents = sorted(
        (
            Document(rel, _file_text(rel, content))
            for name in groups
            for rel, content in groups[name]
        ),
        key=lambda d: d.name,
    )
    manifest = _stdlib_manifest(root, packages, groups, documents)
    # A distinct sha256 keys a distinct token cache (the documents differ from stdlib's).
    manifest.update(corpus="stdlib_files", split_by="repository")
    manifest["sha256"] = hashlib.sha256(f"files:{manifest['sha256']}".encode()).hexdigest()
    return Corpus(documents, manifest)


def repository(name: str) -> str:
    """The repository of a document name: its first path component, without a ``.py`` suffix.

    ``asyncio/events.py`` -> ``asyncio``; ``os.py`` -> ``os``; ``asyncio`` -> ``asyncio``.
    """
    first = name.split("/", 1)[0]
    return first.removesuffix(".py")


def _input_files(path: str | pathlib.Path) -> tuple[pathlib.Path, list[pathlib.Path]]:
    """``path`` itself, or every non-hidden file below the directory ``path``, sorted."""
    path = pathlib.Path(path).expanduser()
    if path.is_file():
        return path.parent, [path]
    if not path.is_dir():
        raise ValueError(f"config.data.path = {str(path)!r}: no such file or directory")
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and not any(s.startswith(".") for s in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(f"config.data.path = {str(path)!r}: the directory holds no files")
    return path.parent, files


def text_corpus(path: str | pathlib.Path) -> Corpus:
    """One document per file of ``path`` (a file, or a directory searched recursively)."""
    base, paths = _input_files(path)
    files = [(p.relative_to(base).as_posix(), p.read_bytes()) for p in paths]
    documents = [Document(name, _decode(content)) for name, content in files]
    manifest = {
        "corpus": "text",
        "path": str(path),
        "documents": len(documents),
        "files": len(files),
        "bytes": sum(len(c) for _, c in files),
        "sha256": _digest(files),
    }
    return Corpus(sorted(documents, key=lambda d: d.name), manifest)


def jsonl_corpus(path: str | pathlib.Path, *, text_field: str = "text") -> Corpus:
    """One document per JSON line of the file(s) at ``path``: the string ``text_field``.

    Malformed lines are skipped and counted (``manifest["malformed_lines"]``), never fatal.
    """
    base, paths = _input_files(path)
    files, documents, malformed = [], [], []
    for p in paths:
        rel = p.relative_to(base).as_posix()
        content = p.read_bytes()
        files.append((rel, content))
        for lineno, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                text = record[text_field]
                if not isinstance(text, str):
                    raise TypeError(f"field {text_field!r} is {type(text).__name__}, not str")
            except (ValueError, KeyError, TypeError, IndexError):
                malformed.append(f"{rel}:{lineno}")
                continue
            documents.append(Document(f"{rel}:{lineno:09d}", text))
    if malformed:
        logging.warning(
            "jsonl corpus %s: skipped %d malformed line(s) (no string field %r or bad JSON), "
            "first: %s",
            path,
            len(malformed),
            text_field,
            ", ".join(malformed[:MAX_REPORTED_MALFORMED]),
        )
    if not documents:
        raise ValueError(f"config.data.path = {str(path)!r}: no valid JSONL documents")
    manifest = {
        "corpus": "jsonl",
        "path": str(path),
        "text_field": text_field,
        "documents": len(documents),
        "files": len(files),
        "bytes": sum(len(c) for _, c in files),
        "malformed_lines": len(malformed),
        "malformed_examples": malformed[:MAX_REPORTED_MALFORMED],
        "sha256": _digest([*files, ("text_field", text_field.encode())]),
    }
    return Corpus(sorted(documents, key=lambda d: d.name), manifest)


CORPORA.register("stdlib")(lambda data: stdlib_corpus())
CORPORA.register("stdlib_files")(lambda data: stdlib_files_corpus())
CORPORA.register("text")(lambda data: text_corpus(data.path))
CORPORA.register("jsonl")(lambda data: jsonl_corpus(data.path, text_field=data.text_field))


def split_by_name(
    names: Sequence[str], fraction: float, seed: int, *, groups: Sequence[str] | None = None
) -> np.ndarray:
    """Boolean mask of the held-out documents: a deterministic share ``fraction`` of ``names``.

    Names are ranked by ``sha256(f"{seed}:{name}")`` and the lowest ``round(fraction * n)`` are
    held out, at least one and at most ``n - 1`` when ``fraction > 0`` and ``n >= 2``. The
    result depends only on the names, the fraction and the seed, never on their order. With
    ``groups`` (one group name per document, e.g. its ``repository``) the same rule picks whole
    groups: a document is held out with its group.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"config.data.eval_fraction = {fraction}: must be in [0, 1)")
    keys = list(names) if groups is None else list(groups)
    units = sorted(set(keys))
    n = len(units)
    count = round(fraction * n)
    if fraction > 0 and n >= 2:
        count = min(max(count, 1), n - 1)
    ranked = sorted(units, key=lambda u: (hashlib.sha256(f"{seed}:{u}".encode()).hexdigest(), u))
    held = set(ranked[:count])
    return np.array([k in held for k in keys], dtype=bool)
