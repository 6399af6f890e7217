"""Synthetic long-context tasks generated offline: passkey, RULER-style, Lost-in-the-Middle KV.

Every sample is a prompt (ending in the answer prefix), its reference answers and a scoring
metric. Formats follow the reference notes (``eval_data_train.md`` §1):

- ``passkey``: Landmark Attention / Position Interpolation (Mohtashami & Jaggi 2023, arXiv
  2305.16300; Chen et al. 2023, arXiv 2306.15595): task line, filler prefix, pass-key line,
  filler suffix, question, joined by ``"\\n"``; the filler is sliced from the start of the
  repeated grass/sky text so it may end mid-sentence; key ``randint(1, 50000)``. The prefix takes
  ``round(depth * n)`` of the ``n`` filler characters (Landmark draws it uniformly instead).
- RULER (Hsieh et al. 2024, arXiv 2404.06654, NVIDIA/RULER): ``niah_single_1..3``,
  ``niah_multikey_1..3``, ``niah_multivalue``, ``niah_multiquery``, ``vt``, ``cwe``, ``fwe``
  with RULER's templates, needles and answer prefixes. RULER's Paul Graham essay haystack is
  replaced by a **code** haystack: lines of held-out corpus documents (passed in as
  ``code_lines``), needles inserted as whole lines. Words come from ``lcm.data.words``
  (pseudo-words) instead of ``wonderwords``. The optional one-shot examples of ``vt`` and
  ``cwe`` are left out (they cost more than a tiny model's whole context).
- ``kv_retrieval``: Lost in the Middle (Liu et al. 2023, arXiv 2307.03172): UUID -> UUID pairs
  rendered as one JSON object, the gold pair at ``round(depth * (pairs - 1))``.

Sizes are fitted to a token budget: the largest haystack whose prompt plus the task's
generation budget fits ``length`` tokens (binary search; exact for the byte tokenizer). The
needle (the first needle for multi-needle tasks) is inserted at ``depth`` in [0, 1] of the
haystack; other needles go to random positions. A sample is a pure function of
``(seed, task, length, depth, index)`` through a string-seeded ``random.Random``.

The generators are registered in ``CORPORA`` as ``synthetic_tasks`` (prompt followed by the
answer, ``config.data.synthetic_documents`` documents per task at ``config.data.seq_len`` bytes,
the tasks of ``config.data.synthetic_tasks``), so the data pipeline can train on them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import string
import uuid
from collections.abc import Callable, Sequence

from lcm.data.corpora import CORPORA, Corpus, Document
from lcm.data.words import word_lists

PASSKEY_TASK = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there."
)
PASSKEY_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)
PASSKEY_LINE = "The pass key is {key}. Remember it. {key} is the pass key."
PASSKEY_QUESTION = "What is the pass key? The pass key is"

NOISE = PASSKEY_FILLER  # RULER's noise haystack sentence is the same grass/sky text
NEEDLE = "One of the special magic {type_needle_v} for {key} is: {value}."
NIAH_TEMPLATE = (
    "Some special magic {type_needle_v} are hidden within the following text. Make sure to "
    "memorize it. I will quiz you about the {type_needle_v} afterwards.\n{context}\n"
    "What are all the special magic {type_needle_v} for {query} mentioned in the provided text?"
    " The special magic {type_needle_v} for {query} mentioned in the provided text are"
)
VT_TEMPLATE = (
    "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    "{context}\nQuestion: Find all variables that are assigned the value {query} in the text "
    "above. Answer: According to the chain(s) of variable assignment in the text above, {num_v} "
    "variables are assigned the value {query}, they are: "
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n{context}\nQuestion: What are the {num_cw} most "
    "common words in the above list? Answer: The top {num_cw} words that appear most often in "
    "the list are:"
)
FWE_TEMPLATE = (
    "Read the following coded text and track the frequency of each coded word. Find the three "
    "most frequently appeared coded words. {context}\nQuestion: Do not provide any explanation. "
    "Please ignore the dots '....'. What are the three most frequently appeared words in the "
    "coded text? Answer: According to the coded text above, the three most frequently appeared "
    "words are:"
)
KV_TEMPLATE = (
    "Extract the value corresponding to the specified key in the JSON object below.\n\n"
    "JSON data:\n{records}\n\nKey: {key}\nCorresponding value:"
)


SYNTHETIC_LOSSES = ("all", "answer")  # config.data.synthetic_loss


@dataclasses.dataclass(frozen=True)
class Sample:
    task: str
    prompt: str  # ends with the answer prefix; the model continues it
    references: tuple[str, ...]  # answers the metric looks for in the continuation
    target: str  # the continuation whose log-likelihood is scored (" " + answers)
    depth: float | None  # where the (first) needle sits, fraction of the haystack; None: n/a
    size: int  # haystack units used (filler characters, lines, words, pairs)


@dataclasses.dataclass(frozen=True)
class Task:
    generate: Callable[..., tuple[str, tuple[str, ...]]]  # (rng, size, depth, code_lines)
    metric: str  # passkey | string_match_all | string_match_part
    max_new_tokens: int  # greedy decoding budget, reserved inside the length
    uses_depth: bool  # swept over depths (heatmap) or one cell per length
    needs_code: bool  # needs ``code_lines`` (a held-out corpus haystack)
    settings: dict = dataclasses.field(default_factory=dict)  # recorded with results


def _passkey(rng: random.Random, size: int, depth: float, code_lines) -> tuple[str, tuple]:
    del code_lines
    key = rng.randint(1, 50000)
    prefix = round(depth * size)
    filler = " ".join([PASSKEY_FILLER] * (size // len(PASSKEY_FILLER) + 1))
    lines = [PASSKEY_TASK, filler[:prefix], PASSKEY_LINE.format(key=key), filler[: size - prefix]]
    return "\n".join([*lines, PASSKEY_QUESTION]), (str(key),)


def _draw(rng: random.Random, kind: str) -> str:
    if kind == "numbers":
        return str(rng.randint(10**6, 10**7 - 1))
    if kind == "uuids":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    words = word_lists()
    return f"{rng.choice(words['adjectives'])}-{rng.choice(words['nouns'])}"


def _insert(units: list[str], items: Sequence[str], first_at: int, rng: random.Random):
    """Inserts ``items[0]`` before unit ``first_at`` and the rest at random unit boundaries."""
    places = [first_at] + [rng.randint(0, len(units)) for _ in items[1:]]
    out = list(units)
    for place, item in sorted(zip(places, items, strict=True), key=lambda p: -p[0]):
        out.insert(place, item)
    return out


def _haystack(kind, size, rng, code_lines, type_key, type_value) -> list[str]:
    if kind == "noise":
        return [NOISE] * size
    if kind == "needle":
        return [
            NEEDLE.format(
                type_needle_v=type_value, key=_draw(rng, type_key), value=_draw(rng, type_value)
            )
            for _ in range(size)
        ]
    if not code_lines:
        raise ValueError("the code haystack needs code_lines (held-out corpus lines)")
    return [code_lines[i % len(code_lines)] for i in range(size)]


def _query(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _niah(haystack, type_key, type_value, num_keys=1, num_values=1, num_queries=1):
    num_keys = max(num_keys, num_queries)

    def generate(rng, size, depth, code_lines):
        keys: list[str] = []
        while len(keys) < num_keys:
            key = _draw(rng, type_key)
            if key not in keys:
                keys.append(key)
        values = [[_draw(rng, type_value) for _ in range(num_values)] for _ in keys]
        queried = sorted(rng.sample(range(num_keys), num_queries))
        needles = [
            NEEDLE.format(type_needle_v=type_value, key=keys[i], value=v)
            for i in range(num_keys)
            for v in values[i]
        ]
        # The depth-placed needle is the first value of the first queried key.
        gold = queried[0] * num_values
        needles = [needles[gold], *needles[:gold], *needles[gold + 1 :]]
        units = _haystack(haystack, size, rng, code_lines, type_key, type_value)
        context = "\n".join(_insert(units, needles, round(depth * size), rng))
        template, type_v = NIAH_TEMPLATE, type_value
        if num_queries * num_values == 1:  # RULER's singular wording
            template = template.replace("Some", "A").replace("are all", "is")
            template = template.replace("are", "is")
            type_v = type_value[:-1]
        prompt = template.format(
            type_needle_v=type_v, context=context, query=_query([keys[i] for i in queried])
        )
        return prompt, tuple(v for i in queried for v in values[i])

    settings = dict(
        haystack=haystack,
        type_key=type_key,
        type_value=type_value,
        num_needle_k=num_keys,
        num_needle_v=num_values,
        num_needle_q=num_queries,
    )
    return generate, settings


def _vt(rng: random.Random, size: int, depth: float, code_lines, num_hops: int = 4):
    del depth, code_lines
    names: list[str] = []
    while len(names) < num_hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=5))
        if name not in names:
            names.append(name)
    value = rng.randint(10000, 99999)
    chain = [f"VAR {names[0]} = {value}"]
    chain += [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
    sentences = [NOISE] * size
    places = sorted(rng.sample(range(size + 1), len(chain))) if size + 1 >= len(chain) else []
    if not places:
        places = [0] * len(chain)
    for offset, (place, statement) in enumerate(zip(places, chain, strict=True)):
        sentences.insert(place + offset, statement)
    prompt = VT_TEMPLATE.format(context="\n".join(sentences), query=value, num_v=num_hops + 1)
    return prompt, tuple(names)


def _cwe(rng, size, depth, code_lines, num_cw=10, freq_cw=6, freq_ucw=1):
    del depth, code_lines
    words = word_lists()
    pool = words["nouns"] + words["adjectives"] + words["verbs"]
    chosen = rng.sample(pool, min(num_cw + size, len(pool)))
    common, uncommon = chosen[:num_cw], chosen[num_cw:]
    listed = common * freq_cw + uncommon * freq_ucw
    rng.shuffle(listed)
    context = " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed))
    return CWE_TEMPLATE.format(context=context, num_cw=num_cw), tuple(common)


ZETA_2 = math.pi**2 / 6  # Riemann zeta(2), the Zipf normalizer for alpha = 2


def _fwe(rng, size, depth, code_lines, vocab_size=None):
    """Coded words with Zipf(2) counts ``floor(size * r**-2 / zeta(2))``; rank 1 is noise."""
    del depth, code_lines
    n = vocab_size or max(8, size // 10)
    vocab: set[str] = set()
    while len(vocab) < n:
        vocab.add("".join(rng.choices(string.ascii_lowercase, k=6)))
    ranked = sorted(vocab)
    rng.shuffle(ranked)
    ranked[0] = "..."
    listed = [w for r, w in enumerate(ranked, 1) for _ in range(int(size * r**-2.0 / ZETA_2))]
    rng.shuffle(listed)
    return FWE_TEMPLATE.format(context=" ".join(listed)), tuple(ranked[1:4])


def _kv(rng: random.Random, size: int, depth: float, code_lines):
    del code_lines
    pairs = [(_draw(rng, "uuids"), _draw(rng, "uuids")) for _ in range(max(size, 1))]
    gold = round(depth * (len(pairs) - 1))
    rows = [f'"{k}": "{v}"' for k, v in pairs]
    records = "{" + ",\n ".join(rows) + "}"
    return KV_TEMPLATE.format(records=records, key=f'"{pairs[gold][0]}"'), (pairs[gold][1],)


def _tasks() -> dict[str, Task]:
    tasks = {"passkey": Task(_passkey, "passkey", 8, True, False, {"key": "randint(1, 50000)"})}
    niah = {
        "niah_single_1": ("noise", "words", "numbers", {}),
        "niah_single_2": ("code", "words", "numbers", {}),
        "niah_single_3": ("code", "words", "uuids", {}),
        "niah_multikey_1": ("code", "words", "numbers", {"num_keys": 4}),
        "niah_multikey_2": ("needle", "words", "numbers", {}),
        "niah_multikey_3": ("needle", "uuids", "uuids", {}),
        "niah_multivalue": ("code", "words", "numbers", {"num_values": 4}),
        "niah_multiquery": ("code", "words", "numbers", {"num_queries": 4}),
    }
    for name, (haystack, key, value, counts) in niah.items():
        generate, settings = _niah(haystack, key, value, **counts)
        answers = counts.get("num_values", 1) * counts.get("num_queries", 1)
        budget = answers * (38 if value == "uuids" else 10) + 4
        tasks[name] = Task(generate, "string_match_all", budget, True, haystack == "code", settings)
    tasks["vt"] = Task(_vt, "string_match_all", 40, False, False, {"num_chains": 1, "num_hops": 4})
    tasks["cwe"] = Task(
        _cwe, "string_match_all", 100, False, False, {"num_cw": 10, "freq_cw": 6, "freq_ucw": 1}
    )
    tasks["fwe"] = Task(_fwe, "string_match_all", 30, False, False, {"alpha": 2.0})
    tasks["kv_retrieval"] = Task(_kv, "string_match_all", 40, True, False, {"pairs": "fitted"})
    return tasks


TASKS: dict[str, Task] = _tasks()
TRAINABLE_TASKS = tuple(t for t, spec in TASKS.items() if not spec.needs_code)  # no code haystack


def training_tasks(data_config) -> list[str]:
    """The tasks of the ``synthetic_tasks`` corpus: ``data.synthetic_tasks`` or all of
    ``TRAINABLE_TASKS``."""
    return list(data_config.synthetic_tasks or TRAINABLE_TASKS)


def _rng(seed: int, task: str, length: int, depth: float | None, index: int) -> random.Random:
    return random.Random(f"{seed}/{task}/{length}/{depth}/{index}")


def make_sample(
    task: str,
    *,
    length: int,
    depth: float | None,
    index: int,
    seed: int,
    count: Callable[[str], int] = lambda s: len(s.encode()),
    code_lines: Sequence[str] = (),
) -> Sample | None:
    """The ``index``-th sample of ``task`` fitted to ``length`` tokens; None if none fits.

    Args:
      task: a name in ``TASKS``.
      length: token budget of prompt plus ``TASKS[task].max_new_tokens``.
      depth: needle depth in [0, 1] for depth-swept tasks (ignored, recorded as None, otherwise).
      index: sample number within the (task, length, depth) cell.
      seed: the evaluation seed.
      count: tokens in a string (default: UTF-8 bytes, the byte tokenizer).
      code_lines: haystack lines for the code-haystack tasks.
    """
    if task not in TASKS:
        raise ValueError(f"task = {task!r}; allowed: {', '.join(TASKS)}")
    spec = TASKS[task]
    depth = depth if spec.uses_depth else None
    budget = length - spec.max_new_tokens

    def build(size: int) -> tuple[str, tuple[str, ...]]:
        rng = _rng(seed, task, length, depth, index)
        return spec.generate(rng, size, 0.0 if depth is None else depth, code_lines)

    if count(build(1)[0]) > budget:
        return None
    lo, hi = 1, 2  # invariant: build(lo) fits; find hi that does not
    while (n := count(build(hi)[0])) <= budget:
        if n == count(build(lo)[0]):  # the haystack stopped growing (e.g. word pool used up)
            break
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(build(mid)[0]) <= budget else (lo, mid)
    prompt, references = build(lo)
    return Sample(task, prompt, references, " " + ", ".join(references), depth, lo)


@CORPORA.register("synthetic_tasks")
def synthetic_corpus(data_config) -> Corpus:
    """Prompt+answer documents at ``seq_len`` bytes: ``data.synthetic_documents`` per task.

    The tasks are ``data.synthetic_tasks`` (empty: every task that needs no code haystack); a
    task that does not fit ``seq_len`` gives no documents. Each document's ``answer`` is its
    target (``" " + answers``) and a newline (where greedy evaluation stops), the text
    ``data.synthetic_loss = "answer"`` trains on.
    """
    documents, tasks = [], training_tasks(data_config)
    for task in tasks:
        for i in range(data_config.synthetic_documents):
            depth = _rng(data_config.split_seed, task, -1, None, i).random()
            sample = make_sample(
                task, length=data_config.seq_len, depth=depth, index=i, seed=data_config.split_seed
            )
            if sample is not None:  # the answer ends with the newline evaluation stops at
                answer = sample.target + "\n"
                documents.append(Document(f"{task}/{i:06d}", sample.prompt + answer, answer))
    documents.sort(key=lambda d: d.name)
    digest = hashlib.sha256()
    for doc in documents:
        digest.update(f"{doc.name}\0{doc.text}\n".encode())
    manifest = {
        "corpus": "synthetic_tasks",
        "tasks": tasks,
        "documents": len(documents),
        "seq_len": data_config.seq_len,
        "seed": data_config.split_seed,
        "sha256": digest.hexdigest(),
    }
    return Corpus(documents, manifest)
