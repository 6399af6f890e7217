"""experiments.attention_benchmarks: record normalisation, the report, a toy run."""

import json

import pytest

from experiments.attention_benchmarks import run as ab_run

# One line in each source's own format (as the scripts print them).
RECORDS = [
    {"source": "bench_attention", "impl": "blockwise", "T": 1024, "mask": "causal", "block": 128,
     "fwd_s": 0.5, "fwd_bwd_s": 1.5, "base_rss_gib": 0.25, "peak_rss_gib": 0.75, "load": 2.0},
    {"source": "bench_attention", "impl": "xla", "T": 131072, "mask": "causal", "block": None,
     "skipped": "xla needs about 512 GiB of dense logits", "load": 1.0},
    {"source": "bench_ring", "impl": "ring", "devices": 8, "layout": "zigzag", "T": 2048,
     "fwd_s": 0.25, "fwd_bwd_s": 0.75, "load": 3.0},
    {"source": "bench_ring", "T": 16384, "fwd_bwd_bytes_per_device_ring8": 2**29,
     "fwd_bwd_bytes_one_device_blockwise": 2**31, "ratio": 0.25},
    {"source": "bench_kernels", "bench": "flash_interpret", "backend": "cpu", "impl": "lcm_flash",
     "mode": "tpu_interpret", "pass_": "fwd", "causal": True, "shape_bnth": [1, 4, 512, 64],
     "seconds": 2.0},
    {"source": "bench_kernels", "bench": "flash_interpret", "backend": "cpu", "impl": "lcm_flash",
     "mode": "tpu_interpret", "pass_": "fwd+bwd", "causal": True, "shape_bnth": [1, 4, 512, 64],
     "seconds": 6.0},
    {"source": "bench_sparse", "summary": True, "T": 2048, "moba_speedup": 1.5},
    {"source": "bench_train", "impl": "blockwise", "block": 128, "seq_len": 2048, "batch": 4,
     "step_s": 1.6, "tokens_per_sec": 5120.0, "mfu": 0.14, "load": 1.0},
]  # fmt: skip


@pytest.fixture(scope="module")
def ab():
    return ab_run


def test_rows_keep_each_sources_numbers(ab):
    table = {(r["source"], r["impl"], r["T"]): r for r in ab.rows(RECORDS)}
    assert len(table) == 7  # the sparse summary line is not a measurement
    blockwise = table["bench_attention", "blockwise", 1024]
    assert (blockwise["fwd_s"], blockwise["fwd_bwd_s"]) == (0.5, 1.5)
    assert blockwise["mem_gib"] == pytest.approx(0.5) and blockwise["mem_kind"] == "RSS added"
    assert "512 GiB" in table["bench_attention", "xla", 131072]["note"]
    assert table["bench_ring", "ring x8 (simulated)", 2048]["fwd_bwd_s"] == 0.75
    assert table["bench_ring", "ring x8 (simulated)", 16384]["mem_gib"] == pytest.approx(0.5)
    assert table["bench_ring", "blockwise x1", 16384]["mem_gib"] == pytest.approx(2.0)
    flash = table["bench_kernels", "lcm_flash (tpu_interpret)", 512]  # fwd and bwd lines joined
    assert (flash["fwd_s"], flash["fwd_bwd_s"]) == (2.0, 6.0)
    train = table["bench_train", "train step (blockwise)", 2048]
    assert train["fwd_bwd_s"] == 1.6 and "MFU 0.140" in train["note"]


def test_report_and_missing(ab, tmp_path):
    info = {"command": "python x", "commit": "abc", "machine": "m", "date": "d", "wall_s": 1.0,
            "load_start": (1.0, 1.0, 1.0), "load_end": (2.0, 2.0, 2.0),
            "sources": {"bench_ring": ["--seq", "64"]}, "included": []}  # fmt: skip
    ab.write_report(RECORDS, info, tmp_path)
    report = (tmp_path / "attention_benchmarks.md").read_text()
    assert "| bench_attention | blockwise | 1024 | causal, block 128 | 0.500 | 1.500 |" in report
    assert "No compiled Pallas numbers" in report
    assert (tmp_path / "attention_benchmarks.png").stat().st_size > 0
    tpu = [{**RECORDS[4], "backend": "tpu"}]
    assert not any("No compiled Pallas" in m for m in ab.missing(tpu))


def test_read_jsonl_tags_committed_results(ab, tmp_path):
    path = tmp_path / "bench_x.jsonl"
    lines = [{"command": "c", "commit": "123"}, {"impl": "moba", "T": 8}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert ab.read_jsonl(path) == [{"source": "bench_x (committed: 123)", "impl": "moba", "T": 8}]


@pytest.mark.slow  # runs the benchmarks; the report is tested above and by from_results_test
def test_toy_run(ab, tmp_path):
    args = "--lengths 64 --windows 0 --impls blockwise --block 32 --reps 1"
    ab.main(["--sources", "bench_attention", "--arg", "bench_attention", args, "--include",
             "--out", str(tmp_path)])  # fmt: skip
    records = [
        json.loads(x) for x in (tmp_path / "attention_benchmarks.jsonl").read_text().splitlines()
    ]
    assert records[0]["sources"] == {"bench_attention": args.split()}
    (case,) = records[1:]
    assert case["impl"] == "blockwise" and case["T"] == 64 and case["fwd_bwd_s"] > 0
    assert (
        "| bench_attention | blockwise | 64 |" in (tmp_path / "attention_benchmarks.md").read_text()
    )
