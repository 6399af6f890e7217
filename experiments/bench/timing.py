"""What the benchmark scripts share: median wall time, and one measurement in its own process.

- ``median_seconds``: median wall seconds of repeated calls (after a warm-up call, or none when
  the caller passes an already compiled function, as for very long sequences).
- ``run_case``: runs one case as a subprocess (``python -m experiments.bench.x --_case ...``,
  from the repository root) so its peak RSS is its own, and merges the JSON line it prints
  (or its error) into the record.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

import jax

from experiments.common import REPO_ROOT


def median_seconds(fn, args, reps: int, *, warm_up: bool = True) -> float:
    """Median wall seconds of ``fn(*args)`` over ``reps`` calls, after one warm-up call (which
    compiles) unless ``warm_up`` is False."""
    if warm_up:
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(command: list[str], record: dict) -> dict:
    """Runs ``command``; adds the last JSON line it prints to ``record`` (or its last error line
    as ``record["error"]``) and returns ``record``."""
    proc = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO_ROOT)
    if proc.returncode:
        record["error"] = proc.stderr.strip().splitlines()[-1:]
    else:
        record.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return record
