"""``config.eval`` checks: lengths, protocol, tasks, depths, where results go."""

from __future__ import annotations

import re

from lcm import checks
from lcm.data import synthetic
from lcm.eval.perplexity import PROTOCOLS

V = "eval."
INITS = ("checkpoint", "random")  # what ``lcm.eval.runner.load_params`` starts from


def check_config(e: checks.Errors) -> None:
    e.check(
        V + "lengths",
        lambda v: len(v) > 0 and all(checks.is_positive_int(x) for x in v),
        "must be a non-empty tuple of positive integers",
    )
    e.one_of(V + "protocol", PROTOCOLS)
    e.positive_int(V + "num_documents", V + "samples_per_cell", V + "batch_size")
    e.one_of(V + "init", INITS)
    e.non_negative_int(V + "seed")
    lengths = e.get(V + "lengths")
    shortest = min(lengths) if lengths and all(map(checks.is_positive_int, lengths)) else None
    e.check(
        V + "stride",
        lambda v: checks.is_non_negative_int(v) and (shortest is None or v <= shortest),
        f"must be an integer in [0, min(eval.lengths) = {shortest}] (0 = length // 8)",
    )
    tasks = ("perplexity", *synthetic.TASKS)
    e.check(
        V + "tasks",
        lambda v: len(v) > 0 and all(t in tasks for t in v),
        f"must be a non-empty tuple of: {', '.join(tasks)}",
    )
    e.check(
        V + "depths",
        lambda v: len(v) > 0 and all(checks.is_number(d) and 0 <= d <= 1 for d in v),
        "must be a non-empty tuple of numbers in [0, 1]",
    )
    e.check(
        V + "label",
        lambda v: re.fullmatch(r"[A-Za-z0-9_.+=-]*", v) and v not in (".", ".."),
        "must be a directory name: letters, digits and _ . + = - only",
    )
    e.check(
        V + "compare",
        lambda v: all(isinstance(p, str) for p in v),
        "must be a tuple of results.json paths",
    )
