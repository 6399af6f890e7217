"""What the studies share: paths, the command line, the markdown report and the provenance.

- ``REPO_ROOT``, ``results_dir(study)``: ``experiments/<study>/results`` holds a study's
  committed raw results (JSON / JSON lines), its markdown report and its plots.
- ``Provenance``: the command, commit, machine, date, wall time and load average of a run,
  recorded once (``finish()`` -> a dict kept in the raw results) and written once
  (``provenance_markdown``).
- ``markdown_table``, ``refused`` (the cell of a step XLA refused); ``write_json`` / ``read_json``.
- ``study_parser``: the options every study has (``--out``, ``--from-results``: re-render the
  markdown and the plots from the raw results, running nothing); ``parse_args``: the
  small-model studies' command line (``--toy`` | ``--full``, ``--workdir``, ``--quiet``).
- ``train`` / ``retrieval_train`` / ``evaluate`` / ``override``: train-or-reuse and evaluate the
  small models of length_extrapolation, passkey_depth and rope_base_bound.

Nothing here imports jax at module level: a study may set ``XLA_FLAGS`` or ``JAX_PLATFORMS``
before jax starts.
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


def results_dir(study: str) -> pathlib.Path:
    """``experiments/<study>/results``: the committed raw results, report and plots."""
    return REPO_ROOT / "experiments" / study / "results"


def write_json(path: pathlib.Path, data) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def read_json(path: pathlib.Path):
    return json.loads(pathlib.Path(path).read_text())


# --- provenance -----------------------------------------------------------------------------


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
    """Records the command, commit and machine at start; ``finish()`` adds wall time and load.

    ``module`` is the study's module (``experiments.<study>.run``) and ``args`` its arguments,
    so the command reads as it is typed from the repository root.
    """

    def __init__(self, module: str, args: Sequence[str] = ()):
        import jax

        self.start = time.perf_counter()
        self.command = " ".join(
            [".venv/bin/python", "-m", module, *(shlex.quote(str(a)) for a in args)]
        )
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!*/results/*")
        self.commit = _git("rev-parse", "--short=12", "HEAD") + (
            " (with uncommitted changes)" if dirty and dirty != "unknown" else ""
        )
        devices = jax.devices()
        self.cores = os.cpu_count()
        self.machine = (
            f"{_cpu_model()}, {self.cores} cores; jax {jax.__version__} on "
            f"{len(devices)} {devices[0].platform} device(s); Python {platform.python_version()}"
        )
        self.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.load_start = list(os.getloadavg())

    def finish(self) -> dict:
        """The run's provenance as a dict (kept in the raw results; ``provenance_markdown``)."""
        return {
            "command": self.command,
            "commit": self.commit,
            "machine": self.machine,
            "cores": self.cores,
            "date": self.date,
            "wall_s": round(time.perf_counter() - self.start, 1),
            "load_start": [round(x, 2) for x in self.load_start],
            "load_end": [round(x, 2) for x in os.getloadavg()],
        }

    def markdown(self) -> str:
        return provenance_markdown(self.finish())


def provenance_markdown(p: dict | str) -> str:
    """The provenance block of a report: one bullet per recorded field (a string: as is, for
    results that kept their provenance as markdown)."""
    if isinstance(p, str):
        return p
    fmt = lambda la: " / ".join(f"{x:.1f}" for x in la)  # noqa: E731
    lines = [f"- Command: `{p['command']}`", f"- Commit: `{p['commit']}`"]
    if p.get("machine"):
        lines.append(f"- Machine: {p['machine']}")
    if p.get("date"):
        lines.append(f"- Date: {p['date']}")
    if p.get("wall_s") is not None:
        lines.append(f"- Wall time: {p['wall_s'] / 60:.1f} min")
    load = [f"at {k} {fmt(p[f'load_{k}'])}" for k in ("start", "end") if p.get(f"load_{k}")]
    if load:
        cores = p.get("cores")
        note = (
            f" ({cores} cores: a load above {cores} means other processes stretched the wall time)"
            if cores
            else ""
        )
        lines.append(f"- Load average (1/5/15 min) {', '.join(load)}{note}.")
    if p.get("note"):
        lines.append(f"- {p['note']}")
    return "\n".join(lines)


# --- the report -----------------------------------------------------------------------------


def refused(error: str) -> str:
    """The table cell of a step XLA refused to compile: the memory it overflowed."""
    return "over VMEM" if "VmemOom" in error else "over HBM"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant digits."""

    def cell(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


# --- the command line -----------------------------------------------------------------------


def study_parser(description: str, study: str, *, out_default=True) -> argparse.ArgumentParser:
    """``--out`` (default ``experiments/<study>/results``) and ``--from-results`` (re-render the
    markdown and the plots from the raw results in ``--out``; nothing runs)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{study}.run", description=description
    )
    parser.add_argument(
        "--out",
        type=pathlib.Path,
        default=results_dir(study) if out_default else None,
        help=f"results directory (default: experiments/{study}/results)",
    )
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="re-render the markdown and plots from the raw results in --out; run nothing",
    )
    return parser


def logger(quiet: bool = False) -> Callable[[str], None]:
    """Prints with a flush (or nothing when ``quiet``)."""
    if quiet:
        return lambda s: None
    return lambda s: print(s, file=sys.stdout, flush=True)


def parse_args(argv: Sequence[str], description: str, *, study: str, models: str, full_help: str):
    """The small-model studies' command line: ``--toy`` | ``--full``, ``--workdir``, ``--out``,
    ``--quiet``, ``--from-results``. Fills ``args.setting``, ``args.workdir``, ``args.out``.

    Models live in ``workdir/experiments/<models>-<setting>``; default-setting results go to
    ``experiments/<study>/results`` (committed), toy and full ones under the workdir.
    """
    parser = study_parser(description, study, out_default=False)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--toy", action="store_true", help="tiny sizes (the smoke test)")
    size.add_argument("--full", action="store_true", help=full_help)
    parser.add_argument("--workdir", help=f"default: workdir/experiments/{models}-<setting>")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(list(argv))
    args.setting = "toy" if args.toy else "full" if args.full else "default"
    if args.workdir is None:
        args.workdir = str(REPO_ROOT / "workdir" / "experiments" / f"{models}-{args.setting}")
    if args.out is None:
        work_results = pathlib.Path(args.workdir) / "results"
        args.out = results_dir(study) if args.setting == "default" else work_results
    args.argv = list(argv)
    return args


# --- small models: train or reuse, evaluate -------------------------------------------------


def override(config, overrides: dict):
    """A copy of ``config`` with ``{"a.b": value}`` set (``seq_len`` also sets ``data.seq_len``)."""
    config = config.copy_and_resolve_references()
    config.update_from_flattened_dict(overrides)
    if "seq_len" in overrides:
        config.data.seq_len = overrides["seq_len"]
    return config


def train(config, workdir: pathlib.Path, *, log: Callable[[str], None]) -> dict:
    """Trains ``config`` in ``workdir`` (or reuses it: a workdir that already holds the final
    checkpoint resumes with nothing left to do); returns the last logged metrics."""
    from lcm.train import loop

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
    from lcm.eval import runner

    config = config.copy_and_resolve_references()
    config.eval.label = label
    log(f"== eval {label} ({workdir})")
    return runner.evaluate(config, str(workdir), log=lambda s: log(f"  {s}"))
