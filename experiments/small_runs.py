"""Train-or-reuse and evaluate small models, and the provenance block of a results file.

Shared by ``length_extrapolation.py``, ``passkey_depth.py`` and ``rope_base_bound.py``:

- ``train``: ``lcm.train.loop.train`` in a workdir; a workdir that already holds the final
  checkpoint is reused (training resumes, so nothing is left to do).
- ``retrieval_train``: a model trained on synthetic retrieval documents only, with the loss on
  the answers alone (``config.data.synthetic_loss = "answer"``).
- ``evaluate``: ``lcm.eval.runner.evaluate`` under a label (``workdir/eval/<label>/``).
- ``Provenance``: the exact command, commit, machine, load average and wall time that every
  ``experiments/results/<name>.md`` records.
- ``markdown_table``: a GitHub table from a header and rows.
- ``parse_args`` / ``write_report``: the command line and the results files every script shares.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # this checkout's lcm, even beside another installed copy
    sys.path.insert(0, str(REPO_ROOT))

import jax  # noqa: E402

from lcm.eval import runner  # noqa: E402
from lcm.train import loop  # noqa: E402


def train(config, workdir: pathlib.Path, *, log: Callable[[str], None]) -> dict:
    """Trains ``config`` in ``workdir`` (or reuses it); returns the last logged metrics."""
    log(f"== train {workdir}")
    out = loop.train(config, str(workdir), log=lambda s: log(f"  {s}"))
    out.pop("state", None)
    return out


def retrieval_train(config, workdir: pathlib.Path, *, steps: int, tasks, log) -> dict:
    """``config``'s model trained from scratch on retrieval alone for ``steps`` steps.

    Every row is a fresh synthetic document of ``tasks`` at ``config.seq_len`` (each seen once)
    and only its answer is scored (``config.data.synthetic_loss = "answer"``). Under the
    full-context loss the few answer bytes are swamped by easy filler, and these small models
    never learn to retrieve within a CPU budget; fine-tuning the language models this way was
    slow and erratic (0-8 % exact match after 600 steps in three tries), training from scratch
    reliable (the retrieval loss collapses within about 300 steps).
    """
    rows = steps * config.data.batch_size
    retrieval = override(
        config,
        {
            "data.synthetic_share": 1.0,
            "data.synthetic_tasks": tuple(tasks),
            "data.synthetic_loss": "answer",
            "data.synthetic_documents": -(-rows // len(tasks)),
            "train.num_steps": steps,
            "train.warmup_steps": max(steps // 10, 1),
            "train.eval_every": 0,
            "train.checkpoint_every": steps,
        },
    )
    return train(retrieval, workdir, log=log)


def evaluate(config, workdir: pathlib.Path, label: str, *, log: Callable[[str], None]) -> dict:
    """``config.eval`` on the newest checkpoint of ``workdir``, results in ``eval/<label>/``."""
    config = config.copy_and_resolve_references()
    config.eval.label = label
    log(f"== eval {label} ({workdir})")
    return runner.evaluate(config, str(workdir), log=lambda s: log(f"  {s}"))


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


class Provenance:
    """Records the command, commit and machine at start; ``markdown()`` adds load and time."""

    def __init__(self, argv: Sequence[str]):
        self.start = time.perf_counter()
        self.command = " ".join(
            shlex.quote(a) for a in [".venv/bin/python", os.path.relpath(argv[0], REPO_ROOT)]
        )
        if len(argv) > 1:
            self.command += " " + " ".join(shlex.quote(a) for a in argv[1:])
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        self.commit = _git("rev-parse", "--short=12", "HEAD") + (
            " (with uncommitted changes)" if dirty and dirty != "unknown" else ""
        )
        devices = jax.devices()
        self.machine = (
            f"{_cpu_model()}, {os.cpu_count()} cores; jax {jax.__version__} on "
            f"{len(devices)} {devices[0].platform} device(s); Python {platform.python_version()}"
        )
        self.load_start = os.getloadavg()

    def markdown(self) -> str:
        wall = time.perf_counter() - self.start
        load_end = os.getloadavg()
        fmt = lambda la: " / ".join(f"{x:.1f}" for x in la)  # noqa: E731
        return "\n".join(
            [
                f"- Command: `{self.command}`",
                f"- Commit: `{self.commit}`",
                f"- Machine: {self.machine}",
                f"- Wall time: {wall / 60:.1f} min",
                f"- Load average (1/5/15 min) at start {fmt(self.load_start)}, at end "
                f"{fmt(load_end)} ({os.cpu_count()} cores: a load above {os.cpu_count()} means "
                "other processes stretched the wall time).",
            ]
        )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant digits."""

    def cell(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def override(config, overrides: dict):
    """A copy of ``config`` with ``{"a.b": value}`` set (``seq_len`` also sets ``data.seq_len``)."""
    config = config.copy_and_resolve_references()
    config.update_from_flattened_dict(overrides)
    if "seq_len" in overrides:
        config.data.seq_len = overrides["seq_len"]
    return config


def resolve_dirs(args, argv: Sequence[str], models: str):
    """Fills ``args.setting``, ``args.workdir`` and ``args.out`` from ``--toy`` / ``--full``.

    Models live in ``workdir/experiments/<models>-<setting>``; default-setting results go to
    ``experiments/results`` (committed), toy and full ones under the workdir.
    """
    args.setting = "toy" if args.toy else "full" if args.full else "default"
    if args.workdir is None:
        args.workdir = str(REPO_ROOT / "workdir" / "experiments" / f"{models}-{args.setting}")
    if args.out is None:
        default = REPO_ROOT / "experiments" / "results"
        args.out = str(
            default if args.setting == "default" else pathlib.Path(args.workdir) / "results"
        )
    args.argv = list(argv)
    return args


def logger(quiet: bool = False) -> Callable[[str], None]:
    """Prints with a flush (or nothing when ``quiet``)."""
    if quiet:
        return lambda s: None
    return lambda s: print(s, file=sys.stdout, flush=True)


def parse_args(argv: Sequence[str], description: str, *, models: str, full_help: str):
    """The shared command line (``--toy`` | ``--full``, ``--workdir``, ``--out``, ``--quiet``),
    parsed and resolved by ``resolve_dirs`` (models in ``workdir/experiments/<models>-*``)."""
    parser = argparse.ArgumentParser(description=description)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--toy", action="store_true", help="tiny sizes (the smoke test)")
    size.add_argument("--full", action="store_true", help=full_help)
    parser.add_argument("--workdir", help=f"default: workdir/experiments/{models}-<setting>")
    parser.add_argument("--out", help="default: experiments/results (toy/full: <workdir>/results)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return resolve_dirs(parser.parse_args(list(argv[1:])), argv, models)


def write_report(out: pathlib.Path, work: pathlib.Path, name: str, text: str, data, log):
    """Writes ``out/<name>.md`` (``text``) and ``work/<name>.json`` (``data``), logs ``text``;
    returns the markdown path."""
    md = out / f"{name}.md"
    md.write_text(text)
    (work / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    log(text)
    return md
