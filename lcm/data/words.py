"""Deterministic pseudo-word lists for the synthetic tasks (no downloads, no word-list package).

RULER draws needle keys (``adjective-noun``) and the common-words-extraction vocabulary from the
``wonderwords`` package's English lists. We generate pronounceable pseudo-words instead:
two or three consonant-vowel syllables plus an optional final consonant (``"kotaven"``), drawn
with ``random.Random(seed)`` from fixed letter sets, deduplicated in draw order. The lists are
the same on every machine and Python version (``random.Random`` with an int seed is stable), and
a byte-level model sees words of 4-7 letters, like short English words.
"""

from __future__ import annotations

import functools
import random

CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
CODAS = "lmnrst"
ADJECTIVE_SEED, NOUN_SEED, VERB_SEED = 101, 202, 303
LIST_SIZE = 1000  # words per list


def pseudo_words(count: int, seed: int, exclude: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """``count`` distinct pseudo-words drawn with ``random.Random(seed)``, none in ``exclude``."""
    rng = random.Random(seed)
    seen, words = set(exclude), []
    while len(words) < count:
        syllables = rng.randint(2, 3)
        word = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(syllables))
        if rng.random() < 0.5:
            word += rng.choice(CODAS)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return tuple(words)


@functools.cache
def word_lists() -> dict[str, tuple[str, ...]]:
    """``{"adjectives", "nouns", "verbs"}``: three disjoint lists of ``LIST_SIZE`` pseudo-words."""
    adjectives = pseudo_words(LIST_SIZE, ADJECTIVE_SEED)
    nouns = pseudo_words(LIST_SIZE, NOUN_SEED, frozenset(adjectives))
    verbs = pseudo_words(LIST_SIZE, VERB_SEED, frozenset(adjectives + nouns))
    return {"adjectives": adjectives, "nouns": nouns, "verbs": verbs}
