"""Synthetic task generators: documented formats (golden strings), fitting, determinism."""

import json
import random
import re

import numpy as np
import pytest
from ml_collections import ConfigDict

from lcm.data import CORPORA, synthetic
from lcm.data.words import word_lists

CODE = ["def f(x):", "    return x + 1", "class A:", "    pass"]


def test_passkey_golden_landmark_format():
    # Landmark/PI: task, filler prefix, key line, filler suffix, question joined by "\n"; the
    # filler is sliced from the start of the repeated text (so "The grass is green. " here).
    prompt, refs = synthetic._passkey(random.Random(7), 40, 0.5, ())
    assert prompt == (
        "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
        "them. I will quiz you about the important information there.\n"
        "The grass is green. \n"
        "The pass key is 21223. Remember it. 21223 is the pass key.\n"
        "The grass is green. \n"
        "What is the pass key? The pass key is"
    )
    assert refs == ("21223",)


@pytest.mark.parametrize("depth, prefix", [(0.0, 0), (0.25, 25), (1.0, 100)])
def test_passkey_depth_splits_filler(depth, prefix):
    prompt, (key,) = synthetic._passkey(random.Random(0), 100, depth, ())
    lines = prompt.split("\n")
    filler = " ".join([synthetic.PASSKEY_FILLER] * 2)
    assert lines[1] == filler[:prefix] and lines[3] == filler[: 100 - prefix]
    assert lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert 1 <= int(key) <= 50000


def test_niah_single_golden_singular_wording():
    prompt, refs = synthetic.TASKS["niah_single_1"].generate(random.Random(7), 1, 1.0, ())
    assert prompt == (
        "A special magic number is hidden within the following text. Make sure to memorize it. "
        "I will quiz you about the number afterwards.\n"
        "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back "
        "again.\n"
        "One of the special magic numbers for keko-pakeno is: 3530829.\n"
        "What is the special magic number for keko-pakeno mentioned in the provided text? The "
        "special magic number for keko-pakeno mentioned in the provided text is"
    )
    assert refs == ("3530829",)


def test_niah_multiquery_plural_wording_and_needles():
    prompt, refs = synthetic.TASKS["niah_multiquery"].generate(random.Random(3), 6, 0.5, CODE)
    assert prompt.startswith("Some special magic numbers are hidden within the following text.")
    needles = re.findall(
        r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.", prompt
    )
    assert len(needles) == 4
    keys = [k for k, _ in needles]
    assert sorted(refs) == sorted(v for _, v in needles)
    question = re.search(r"What are all the special magic numbers for (.*?) mentioned", prompt)
    assert sorted(question.group(1).replace(", and ", ", ").split(", ")) == sorted(keys)
    assert question.group(1).count(", and ") == 1
    assert prompt.endswith("mentioned in the provided text are")
    assert all(line in prompt.split("\n") for line in CODE)  # code haystack lines kept whole


def test_niah_multivalue_and_uuid_keys():
    prompt, refs = synthetic.TASKS["niah_multivalue"].generate(random.Random(1), 4, 0.0, CODE)
    assert len(refs) == 4 and all(f"is: {v}." in prompt for v in refs)
    prompt, refs = synthetic.TASKS["niah_multikey_3"].generate(random.Random(1), 3, 0.0, ())
    uuid = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
    lines = prompt.split("\n")[1:-1]
    assert len(lines) == 4  # 3 distractor needles + the gold one, every line a needle
    assert all(
        re.fullmatch(rf"One of the special magic uuids for {uuid} is: {uuid}\.", x) for x in lines
    )
    assert lines[0].endswith(f"is: {refs[0]}.")  # depth 0: gold needle first


def test_vt_chain_in_order():
    prompt, names = synthetic._vt(random.Random(5), 6, 0.0, ())
    value = re.search(r"VAR [A-Z]{5} = (\d{5})\n", prompt).group(1)
    statements = [x for x in prompt.split("\n") if x.startswith("VAR ")]
    assert statements == [f"VAR {names[0]} = {value}"] + [
        f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(4)
    ]
    assert f"assigned the value {value}, they are: " in prompt and len(set(names)) == 5


def test_cwe_counts():
    prompt, common = synthetic._cwe(random.Random(2), 15, 0.0, ())
    listed = re.findall(r"\d+\. ([a-z]+)", prompt.split("\n")[1])
    counts = {w: listed.count(w) for w in set(listed)}
    assert all(counts[w] == 6 for w in common) and len(common) == 10
    assert sorted(c for w, c in counts.items() if w not in common) == [1] * 15


def test_fwe_zipf_counts():
    prompt, refs = synthetic._fwe(random.Random(4), 400, 0.0, ())
    words = prompt.split(" Question:")[0].split("coded words. ")[1].split()
    counts = {w: words.count(w) for w in set(words)}
    assert counts["..."] == int(400 / synthetic.ZETA_2)  # rank 1 is the noise "..."
    assert [counts[w] for w in refs] == [int(400 * r**-2.0 / synthetic.ZETA_2) for r in (2, 3, 4)]


def test_kv_retrieval_json_and_gold_position():
    prompt, (value,) = synthetic._kv(random.Random(0), 5, 0.75, ())
    records = prompt.split("JSON data:\n")[1].split("\n\nKey:")[0]
    pairs = json.loads(records)
    assert len(pairs) == 5 and records.count("\n") == 4
    key = re.search(r'Key: "(.*)"\nCorresponding value:$', prompt).group(1)
    assert list(pairs).index(key) == 3 and pairs[key] == value  # round(0.75 * 4)


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_make_sample_fits_largest_haystack_and_is_deterministic(task):
    length = 1500
    sample = synthetic.make_sample(task, length=length, depth=0.5, index=1, seed=3, code_lines=CODE)
    spec = synthetic.TASKS[task]
    assert len(sample.prompt.encode()) + spec.max_new_tokens <= length
    depth = sample.depth if spec.uses_depth else None
    rng = synthetic._rng(3, task, length, depth, 1)
    bigger, _ = spec.generate(rng, sample.size + 1, depth or 0.0, CODE)
    grows = len(bigger.encode()) > len(sample.prompt.encode())
    assert not grows or len(bigger.encode()) + spec.max_new_tokens > length
    again = synthetic.make_sample(task, length=length, depth=0.5, index=1, seed=3, code_lines=CODE)
    other = synthetic.make_sample(task, length=length, depth=0.5, index=1, seed=4, code_lines=CODE)
    assert again == sample and other != sample
    assert sample.target == " " + ", ".join(sample.references)
    assert all(r in sample.prompt for r in sample.references) or task in ("vt", "cwe", "fwe")


def test_make_sample_none_when_too_short_and_bad_task():
    assert synthetic.make_sample("passkey", length=64, depth=0.0, index=0, seed=0) is None
    with pytest.raises(ValueError, match="task = 'nope'; allowed: passkey"):
        synthetic.make_sample("nope", length=64, depth=0.0, index=0, seed=0)


def test_word_lists_disjoint_and_pinned():
    w = word_lists()
    assert [len(set(v)) for v in w.values()] == [1000, 1000, 1000]
    assert not set(w["adjectives"]) & set(w["nouns"]) and not set(w["nouns"]) & set(w["verbs"])
    assert w["adjectives"][:3] == ("pina", "reko", "lodil")
    assert w["nouns"][:3] == ("somego", "nobulet", "zolor")


def test_synthetic_corpus_registered():
    fields = {"seq_len": 512, "split_seed": 0, "synthetic_tasks": (), "synthetic_documents": 8}
    corpus = CORPORA.get("synthetic_tasks")(ConfigDict(fields))
    tasks = {d.name.split("/")[0] for d in corpus.documents}
    assert "passkey" in tasks and not tasks & {"niah_single_2", "niah_multivalue"}  # no code
    lengths = np.array([len(d.text.encode()) for d in corpus.documents])
    assert lengths.max() <= 512 and corpus.manifest["documents"] == len(corpus.documents)
    for doc in corpus.documents:  # the answer ends the text, with the newline decoding stops at
        assert doc.answer.endswith("\n") and doc.text.endswith(doc.answer) and doc.answer.strip()
    assert CORPORA.get("synthetic_tasks")(ConfigDict(fields)) == corpus
    only = CORPORA.get("synthetic_tasks")(ConfigDict({**fields, "synthetic_tasks": ("passkey",)}))
    assert {d.name.split("/")[0] for d in only.documents} == {"passkey"}
    assert len(only.documents) == 8
