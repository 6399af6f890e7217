import json
import re
import sys

import numpy as np
import pytest

from lcm.data import corpora

FAKE_STDLIB = {
    "os.py": "import sys\n",
    "this.py": "no final newline",
    "asyncio/__init__.py": "from .events import *\n",
    "asyncio/events.py": "class Loop: ...\n",
    "asyncio/base_events.py": "import events\n",
    "asyncio/sub/x.py": "x = 1\n",
    "asyncio/notes.txt": "not python\n",
    "ctypes/__init__.py": "ctypes = 1\n",
    "ctypes/test/test_x.py": "dropped nested test\n",
    "encodings/utf_8.py": "codec table\n",
    "pydoc_data/topics.py": "topics = {}\n",
    "idlelib/editor.py": "gui\n",
    "test/test_os.py": "tests\n",
    "site-packages/pkg/mod.py": "third party\n",
}


@pytest.fixture
def fake_stdlib(tmp_path):
    root = tmp_path / "lib"
    for rel, text in FAKE_STDLIB.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_stdlib_groups_packages_sorted_with_headers_and_drops_dirs(fake_stdlib):
    corpus = corpora.stdlib_corpus(fake_stdlib)
    docs = {d.name: d.text for d in corpus.documents}
    assert list(docs) == ["asyncio", "ctypes", "os", "this"]
    assert docs["asyncio"] == (
        "# FILE: asyncio/__init__.py\nfrom .events import *\n"
        "# FILE: asyncio/base_events.py\nimport events\n"
        "# FILE: asyncio/events.py\nclass Loop: ...\n"
        "# FILE: asyncio/sub/x.py\nx = 1\n"
    )
    assert docs["ctypes"] == "# FILE: ctypes/__init__.py\nctypes = 1\n"
    assert docs["this"] == "# FILE: this.py\nno final newline\n"
    kept = ["asyncio/__init__.py", "asyncio/events.py", "asyncio/base_events.py"]
    kept += ["asyncio/sub/x.py", "ctypes/__init__.py", "os.py", "this.py"]
    m = corpus.manifest
    assert (m["corpus"], m["python"], m["documents"], m["files"]) == ("stdlib", sys.version, 4, 7)
    assert m["bytes"] == sum(len(FAKE_STDLIB[k].encode()) for k in kept)
    json.dumps(m)  # JSON-able


def test_stdlib_manifest_is_stable_and_tracks_content(fake_stdlib):
    first = corpora.stdlib_corpus(fake_stdlib)
    assert corpora.stdlib_corpus(fake_stdlib) == first
    (fake_stdlib / "asyncio/events.py").write_text("class Loop: pass\n")
    assert corpora.stdlib_corpus(fake_stdlib).manifest["sha256"] != first.manifest["sha256"]
    (fake_stdlib / "encodings/utf_8.py").write_text("changed, but dropped\n")
    second = corpora.stdlib_corpus(fake_stdlib).manifest["sha256"]
    (fake_stdlib / "encodings/utf_8.py").write_text("changed again\n")
    assert corpora.stdlib_corpus(fake_stdlib).manifest["sha256"] == second


def test_real_stdlib_packages_in_sorted_path_order():
    corpus = corpora.stdlib_corpus(packages=["json", "textwrap"])
    root = corpora.stdlib_root()
    assert [d.name for d in corpus.documents] == ["json", "textwrap"]
    json_doc = corpus.documents[0].text
    headers = re.findall(r"^# FILE: (\S+)$", json_doc, flags=re.MULTILINE)
    on_disk = sorted(p.relative_to(root).as_posix() for p in (root / "json").rglob("*.py"))
    on_disk = [p for p in on_disk if "__pycache__" not in p]
    assert headers == on_disk and headers[0] == "json/__init__.py"
    assert json_doc.startswith("# FILE: json/__init__.py\n")
    assert corpus.documents[1].text.startswith("# FILE: textwrap.py\n")
    assert corpus.manifest["files"] == len(on_disk) + 1
    with pytest.raises(ValueError, match=r"packages \['encodings'\] not found"):
        corpora.stdlib_corpus(packages=["encodings"])  # dropped, so never found


def test_split_is_deterministic_disjoint_and_by_name():
    names = [f"pkg{i}" for i in range(40)]
    held_out = corpora.split_by_name(names, 0.25, seed=3)
    assert held_out.sum() == 10
    again = corpora.split_by_name(names[::-1], 0.25, seed=3)[::-1]
    np.testing.assert_array_equal(held_out, again)  # independent of order
    assert not np.array_equal(held_out, corpora.split_by_name(names, 0.25, seed=4))
    assert corpora.split_by_name(["a", "b"], 0.01, 0).sum() == 1  # at least one held out
    assert corpora.split_by_name(["a", "b"], 0.99, 0).sum() == 1  # at least one kept
    assert corpora.split_by_name(names, 0.0, 0).sum() == 0
    with pytest.raises(ValueError, match=r"config.data.eval_fraction = 1.0: must be in \[0, 1\)"):
        corpora.split_by_name(names, 1.0, 0)


def test_jsonl_counts_malformed_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        '{"text": "first"}',
        "",
        "{not json",
        '["a", "list"]',
        '{"body": "no text field"}',
        '{"text": 3}',
        '{"text": "second", "id": 7}',
    ]
    path.write_text("\n".join(lines) + "\n")
    corpus = corpora.jsonl_corpus(path)
    assert [d.text for d in corpus.documents] == ["first", "second"]
    m = corpus.manifest
    assert m["malformed_lines"] == 4 and m["documents"] == 2
    assert m["malformed_examples"] == [
        "data.jsonl:3",
        "data.jsonl:4",
        "data.jsonl:5",
        "data.jsonl:6",
    ]
    other_field = corpora.jsonl_corpus(path, text_field="body")
    assert [d.text for d in other_field.documents] == ["no text field"]
    assert other_field.manifest["sha256"] != m["sha256"]  # the field is part of the identity


def test_text_corpus_one_document_per_file(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee")
    (tmp_path / "d" / "sub" / "a.txt").write_text("ay")
    (tmp_path / "d" / ".hidden").write_text("skip")
    corpus = corpora.text_corpus(tmp_path / "d")
    assert [(d.name, d.text) for d in corpus.documents] == [
        ("d/b.txt", "bee"),
        ("d/sub/a.txt", "ay"),
    ]
    assert corpora.text_corpus(tmp_path / "d" / "b.txt").documents[0].name == "b.txt"
    with pytest.raises(ValueError, match=r"config\.data\.path = .*no such file"):
        corpora.text_corpus(tmp_path / "missing")


def test_registry_builds_from_the_data_config(tmp_path, make_config):
    assert {"stdlib", "text", "jsonl"} <= set(corpora.CORPORA.names())
    corpus = corpora.CORPORA.get("text")(make_config().data)
    assert corpus.manifest["corpus"] == "text"
