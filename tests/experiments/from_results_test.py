"""Every committed report is what ``--from-results`` renders from the committed raw results.

For each study, the raw results in ``experiments/<study>/results`` are copied to a temporary
directory, ``python -m experiments.<study>.run --from-results`` renders there, and the
markdown must equal the committed one: a report edited by hand, or left stale after a change to
the renderer or the raw results, fails here, and so does a study without raw results.
"""

import importlib
import shutil

import pytest

from experiments import common

# study -> (its raw results, the reports --from-results writes)
STUDIES = {
    "activation_memory": ("activation_memory.json", ["activation_memory.md"]),
    "attention_benchmarks": ("attention_benchmarks.jsonl", ["attention_benchmarks.md"]),
    "context_parallel": ("context_parallel.json", ["context_parallel.md"]),
    "data_recipes": ("data_recipes.json", ["data_recipes.md", "data_recipes_sliding.md"]),
    "kv_eviction": ("kv_eviction.json", ["kv_eviction.md"]),
    "length_extrapolation": ("length_extrapolation.json", ["length_extrapolation.md"]),
    "passkey_depth": ("passkey_depth.json", ["passkey_depth.md"]),
    "packed_balance": ("packed_balance.json", ["packed_balance.md"]),
    "pod_scale": ("pod_scale.json", ["pod_scale.md"]),
    "ring_scaling": ("ring_scaling.json", ["ring_scaling.md"]),
    "rope_base_bound": ("rope_base_bound.json", ["rope_base_bound.md"]),
}


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_committed_report_is_rendered_from_the_committed_raw_results(study, tmp_path):
    raw, reports = STUDIES[study]
    committed = common.results_dir(study)
    assert (committed / raw).exists(), f"{study}: commit its raw results ({raw}) with the report"
    shutil.copytree(committed, tmp_path, dirs_exist_ok=True)
    for name in reports:
        (tmp_path / name).unlink()
    run = importlib.import_module(f"experiments.{study}.run")
    run.main(["--from-results", f"--out={tmp_path}"])
    for name in reports:
        assert (tmp_path / name).read_text() == (committed / name).read_text(), (
            f"experiments/{study}/results/{name} is not what --from-results renders from {raw}: "
            f"run `.venv/bin/python -m experiments.{study}.run --from-results`"
        )
    assert list(tmp_path.glob("*.png"))


def test_every_study_directory_is_listed():
    studies = {p.parent.name for p in (common.REPO_ROOT / "experiments").glob("*/run.py")}
    assert studies == set(STUDIES)
