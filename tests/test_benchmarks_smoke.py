"""Smoke test: the benchmark scripts run end to end on tiny inputs and write the expected JSON keys.

The real benchmark runs (SciFact, MiniLM) are not part of the test suite; see BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_tiny(tmp_path):
    quality = _load("quality")
    out = tmp_path / "quality_tiny.json"
    md = tmp_path / "quality_tiny.md"
    result = quality.main(["--tiny", "--steps", "2", "--seeds", "0", "--batch-size", "4", "--num-negatives", "2",
                           "--rows", "inbatch", "stale", "refresh_half", "corrector_cemse", "st_mnrl",
                           "--setting", "tiny", "--output", str(out), "--markdown", str(md),
                           "--work-dir", str(tmp_path / "work")])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result, default=float))
    runs = {r["row"]: r for r in data["runs"]}
    assert set(runs) == {"start", "inbatch", "stale", "refresh_half", "corrector_cemse", "st_mnrl"}
    for row, r in runs.items():
        assert "error" not in r, r.get("error")
        for key in ("test_ndcg@10", "test_recall@100", "test_mrr@10"):
            assert 0.0 <= r[key] <= 1.0
        if row != "start":
            for key in ("reembedding_cost", "corpus_passes", "train_s", "wall_s", "peak_rss_mb", "cost"):
                assert key in r, (row, key)
    assert runs["stale"]["reembedding_cost"] >= data["num_docs"]  # the shared initial cache is counted
    assert runs["refresh_half"]["cost"]["num_refreshes"] == 1  # T=2, R=1: the refresh on the last step is skipped
    for key in ("corrected_ndcg@10", "cos_corrected_fresh", "cos_stale_fresh", "cos_stale_fresh_unused"):
        assert key in runs["corrector_cemse"]
    summary = {s["row"]: s for s in data["summary"]}
    assert "cost_ratio_vs_refresh_half" in summary["corrector_cemse"]
    assert "| corrector_cemse |" in md.read_text()


def test_speed_tiny(tmp_path):
    speed = _load("speed")
    out = tmp_path / "speed.json"
    speed.main(["--sizes", "2000", "--tiny", "--output", str(out)])
    data = json.loads(out.read_text())
    for key in ("matmul", "corrector_pass", "step_overhead", "cache_build", "rss_training", "save_load"):
        assert key in data, key
    assert data["corrector_pass"][0]["n"] == 2000
    assert data["corrector_pass"][0]["corrected_gflops"] > 0
    assert 0 < data["step_overhead"]["select_fraction_of_step"]
    assert data["rss_training"]["cache_mb"] > 0
    assert data["save_load"]["load_rows"]["is_memory_mapped_view"]


def test_quality_target_check_pairs_corrector_with_refresh_rows():
    quality = _load("quality")
    summary = [
        {"row": "stale", "test_ndcg@10": 0.340, "reembedding_cost": 7000, "corpus_passes": 1},
        {"row": "refresh_quarter", "test_ndcg@10": 0.352, "reembedding_cost": 22600, "corpus_passes": 4},
        {"row": "refresh_tenth", "test_ndcg@10": 0.360, "reembedding_cost": 53700, "corpus_passes": 10},
        {"row": "corrector_cemse", "test_ndcg@10": 0.352, "reembedding_cost": 7050, "corpus_passes": 1},
    ]
    checks = {(c["corrector"], c["refresh"]): c for c in quality.criterion_check(summary)}
    assert set(checks) == {("corrector_cemse", "refresh_quarter"), ("corrector_cemse", "refresh_tenth")}
    quarter, tenth = checks["corrector_cemse", "refresh_quarter"], checks["corrector_cemse", "refresh_tenth"]
    assert abs(quarter["delta_points"]) < 1e-9 and abs(quarter["cost_ratio"] - 22600 / 7050) < 1e-9
    assert not quarter["met_total_cost"] and quarter["met_corpus_passes"]  # 3.2x passes, 4x corpus passes
    assert abs(tenth["delta_points"] + 0.8) < 1e-9 and not tenth["met_total_cost"]  # 0.8 points below: missed
    text = "\n".join(quality.criterion_lines(summary))
    assert "Best full-refresh row: `refresh_tenth` (36.0)" in text


def test_gpu_check_small_runs_on_cpu_and_fails_loudly(tmp_path):
    """benchmarks/gpu_check.py --small: every part runs on the CPU, the on-device and streamed paths choose the same
    negatives, the JSON holds each figure; a size that cannot run exits 1 and records the error."""
    gpu_check = _load("gpu_check")
    out = tmp_path / "gpu.json"
    assert gpu_check.main(["--small", "--device", "cpu", "--sizes", "3000", "--repeats", "1", "--dim", "32",
                           "--output", str(out)]) == 0
    data = json.loads(out.read_text())
    run = data["sizes"]["3000"]
    assert data["ok"] and data["errors"] == [] and run["same_negatives_on_device_and_streamed"]
    assert run["scan"]["fraction_of_copy_bandwidth"] > 0 and run["view"]["fraction_of_gemm_fp32"] > 0
    assert 0 < run["step"]["on_device"]["selection_fraction"] < 1
    assert set(data["targets"]) == {"scan_at_least_0.7_of_copy_bandwidth", "selection_at_most_5pct_of_step_on_device"}
    assert gpu_check.main(["--small", "--device", "cpu", "--sizes", "3", "--repeats", "1", "--dim", "32",
                           "--output", str(out)]) == 1  # 3 rows cannot give k = 7 negatives
    assert json.loads(out.read_text())["errors"][0]["N"] == 3


@pytest.mark.slow
def test_scale_phases_tiny(tmp_path):
    """benchmarks/scale_phases.py end to end on 3,000 rows: 2 sharded processes, a 2 -> 1 resume, one process."""
    phases = _load("scale_phases")
    out = tmp_path / "phases.json"
    result = phases.main(["--size", "3000", "--queries", "32", "--output", str(out), "--work-dir", str(tmp_path / "w")])
    two = result["runs"]["two"]
    assert [r["local_rows"] for r in two] == [[0, 1500], [1500, 3000]]
    assert result["runs"]["resume1"][0]["local_rows"] == [0, 3000]
    assert all(v is not None for r in two for v in r["peak_rss_mb"].values())
