"""Issue 21: every phase of a sharded run holds only its rows: sharded cache folders (one shard per process and a
manifest), the 2-process recipe run that saves, serves and pushes the whole corpus, and the refusals."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from hf_corrector import CacheCorruptError, StaleCache
from hf_corrector.cache.sharded_store import (MANIFEST_FILE, ShardedCacheSummary, finish_save, shard_name,
                                              staging_dir, write_shard)
from hf_corrector.cache.sharding import row_range
from tests.hub_env import run_with_hub
from tests.test_recipes import _launch, _tiny_recipe_flags

pytest_plugins = ["tests.conftest_hub"]


def _sharded(tmp_path: Path, n: int = 50, world: int = 3, dtype: str = "float32") -> tuple[Path, StaleCache]:
    whole = StaleCache([f"d{i}" for i in range(n)], torch.randn(n, 4), steps=list(range(n)), dtype=dtype,
                       provenance={"encoder": "x"})
    final = tmp_path / "c"
    for rank in range(world):
        write_shard(whole.slice_rows(*row_range(n, world, rank)), staging_dir(final), rank, world)
    finish_save(staging_dir(final), final, world)
    return final, whole


def test_sharded_folder_loads_whole_and_by_any_row_range(tmp_path: Path) -> None:
    final, whole = _sharded(tmp_path)
    assert sorted(p.name for p in final.iterdir()) == [MANIFEST_FILE] + [shard_name(r, 3) for r in range(3)]
    assert not staging_dir(final).exists()
    one = StaleCache.load(final)  # one process: one StaleCache
    assert one.doc_ids == whole.doc_ids and torch.equal(one.matrix(), whole.matrix())
    assert torch.equal(one.steps, whole.steps) and one.provenance["encoder"] == "x"
    for world in (1, 2, 4):  # any number of processes: the rows may span shard files
        parts = [StaleCache.load(final, verify="rows", rows=row_range(50, world, r)) for r in range(world)]
        assert torch.equal(torch.cat([p.matrix() for p in parts]), whole.matrix())
        assert [p.row_offset for p in parts] == [row_range(50, world, r)[0] for r in range(world)]
        assert all(p.total_rows == 50 for p in parts)
    same = StaleCache.load(final, verify="rows", rows=row_range(50, 3, 1))  # one shard exactly: zero-copy
    assert not same._writable
    summary = ShardedCacheSummary(final)
    assert len(summary) == 50 and summary.info()["steps"]["max"] == 49 and summary.info()["shards"] == 3


def test_missing_or_torn_shard_is_refused_naming_it(tmp_path: Path) -> None:
    final, _ = _sharded(tmp_path)
    torn = final / shard_name(1, 3) / "cache.arrow"
    data = torn.read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    with pytest.raises(CacheCorruptError, match=r"shard-00001-of-00003 .*torn"):
        StaleCache.load(final, verify="rows")
    torn.write_bytes(data[:-8] + bytes(8))  # same size, other bytes
    with pytest.raises(CacheCorruptError, match="shard-00001-of-00003 does not match the checksum"):
        StaleCache.load(final)
    torn.write_bytes(data)
    shutil.rmtree(final / shard_name(2, 3))
    with pytest.raises(CacheCorruptError, match=r"shard shard-00002-of-00003 \(rows 33:50\) is missing"):
        StaleCache.load(final, rows=(0, 10))
    (final / MANIFEST_FILE).unlink()  # the main process died before the manifest: not a cache
    with pytest.raises(CacheCorruptError, match="no cache_manifest.json"):
        StaleCache.load(final)


def test_finish_refuses_a_missing_shard_and_replaces_an_old_layout(tmp_path: Path) -> None:
    old = StaleCache([f"d{i}" for i in range(50)], torch.zeros(50, 4))
    old.save(tmp_path / "c")  # a single-file cache from an earlier run, replaced by a sharded save
    final, whole = _sharded(tmp_path, world=2)
    assert not (final / "cache.arrow").exists() and torch.equal(StaleCache.load(final).matrix(), whole.matrix())
    write_shard(whole.slice_rows(0, 25), staging_dir(final), 0, 2)  # rank 1 never wrote its shard
    with pytest.raises(CacheCorruptError, match="shard-00001-of-00002 was not written"):
        finish_save(staging_dir(final), final, 2)
    assert torch.equal(StaleCache.load(final).matrix(), whole.matrix())  # the previous save is untouched
    final1, whole1 = _sharded(tmp_path, world=1)  # fewer processes later: the extra shards go
    assert sorted(p.name for p in final1.iterdir()) == [MANIFEST_FILE, shard_name(0, 1)]


def test_push_sharded_folder_in_datasets_layout(tmp_path: Path, fake_hub) -> None:
    final, whole = _sharded(tmp_path, dtype="float16")
    proc = run_with_hub(f"""
        import json, torch
        from huggingface_hub import HfApi
        from hf_corrector import StaleCache
        from hf_corrector.cache.sharded_store import push_to_hub
        push_to_hub({str(final)!r}, "me/cache")
        files = sorted(HfApi().list_repo_files("me/cache", repo_type="dataset"))
        back = StaleCache.from_hub("me/cache")
        print(json.dumps({{"files": files, "n": len(back), "ids": back.doc_ids[:3] + back.doc_ids[-2:],
                           "sum": float(back.matrix().float().sum()), "max_step": int(back.steps.max())}}))
    """, fake_hub.url, tmp_path)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [f for f in got["files"] if f.startswith("data/")] == [f"data/train-0000{i}-of-00003.parquet"
                                                                  for i in range(3)]
    assert got["n"] == 50 and got["ids"] == ["d0", "d1", "d2", "d48", "d49"] and got["max_step"] == 49
    assert got["sum"] == pytest.approx(float(whole.matrix().float().sum()), abs=1e-3)


def test_two_process_sharded_recipe_saves_serves_and_pushes_the_whole_corpus(tmp_path: Path, fake_hub) -> None:
    """A 2-process cache_sharding="sharded" recipe run (the README's command) leaves stale_cache/ and the served
    index with all 60 rows (before the fix: rank 0's 30), and its stale_cache/ pushed to the Hub reads back whole."""
    common = ("--max_steps", "2", "--skip_initial_eval", "true", "--serve_reencode_budget", "0.1",
              "--cache_write_back", "true")
    out = tmp_path / "out"
    proc = _launch(tmp_path, *_tiny_recipe_flags(tmp_path, out, *common, "--cache_sharding", "sharded"),
                   "--use_cpu", "true")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert (out / "stale_cache" / MANIFEST_FILE).is_file()
    cache = StaleCache.load(out / "stale_cache")
    assert len(cache) == 60 and (cache.steps >= 0).sum() > 0  # both ranks' rows, with the write-backs
    served = StaleCache.load(out / "served_index" / "vectors")
    assert len(served) == 60
    assert "60" in (out / "stale_cache" / "README.md").read_text()
    assert served.doc_ids == cache.doc_ids and len(set(served.doc_ids)) == 60
    metrics = json.loads((out / "results.json").read_text())["results"]["after training"]
    # rank 0's rows only (the bug) lose every query whose positive lies in rank 1's half
    assert metrics["eval_served_recall@100"] == metrics["eval_recall@100"] == 1.0
    proc = run_with_hub(f"""
        from hf_corrector import StaleCache
        from hf_corrector.cache.sharded_store import push_to_hub
        push_to_hub({str(out / "stale_cache")!r}, "me/recipe-cache")
        back = StaleCache.from_hub("me/recipe-cache")
        print(len(back), len(set(back.doc_ids)), int((back.steps >= 0).sum()))
    """, fake_hub.url, tmp_path)
    assert proc.stdout.split()[-3:] == ["60", "60", str(int((cache.steps >= 0).sum()))]


def test_checkpoint_of_two_processes_resumes_in_one_and_one_in_two(tmp_path: Path) -> None:
    """A sharded checkpoint written by 2 gloo ranks loads in 2 processes (each its half) and in 1 (whole), and the
    resumed runs choose what the uninterrupted run chose at steps 2 and 3 and end with its cache (2 -> 2, 2 -> 1);
    a single-process checkpoint resumes in 2 sharded processes, each loading only its rows (1 -> 2)."""
    from tests.test_multiprocess import SCRIPT, _launch_two_processes, _run

    multi, single, two_one, one_two = (tmp_path / n for n in ("multi", "single", "two_one", "one_two"))
    for d in (multi, single, two_one, one_two):
        d.mkdir()
    _launch_two_processes(tmp_path, multi, "4", "scenario", "sharded")
    ckpt2 = multi / "topk" / "checkpoint-2"
    assert (ckpt2 / "stale_cache" / MANIFEST_FILE).is_file()
    whole = StaleCache.load(ckpt2 / "stale_cache")
    _run([sys.executable, str(SCRIPT), str(two_one), "8", "resume", str(ckpt2), "sharded"], tmp_path)
    loaded = torch.load(two_one / "loaded_rank0.pt")
    assert loaded["cache"].shape[0] == 120 and torch.equal(loaded["cache"], whole.matrix().float())
    uninterrupted = json.loads((multi / "topk_chosen.json").read_text())
    assert json.loads((two_one / "resumed_here_chosen.json").read_text()) == [c for c in uninterrupted if c[0] >= 2]
    final = sorted((torch.load(p) for p in multi.glob("topk_rank*.pt")), key=lambda d: d["lo"])
    end = torch.load(two_one / "resumed_here_rank0.pt")
    assert torch.equal(end["steps"], torch.cat([d["steps"] for d in final]))
    # the written-back rows were encoded with another batch layout (8 vs 4 a process): float noise only
    assert torch.allclose(end["cache"], torch.cat([d["cache"] for d in final]), atol=1e-4)

    _run([sys.executable, str(SCRIPT), str(single), "8", "scenario", "sharded"], tmp_path)  # one process
    ckpt1 = single / "topk" / "checkpoint-2"
    whole1 = StaleCache.load(ckpt1 / "stale_cache").matrix().float()
    _launch_two_processes(tmp_path, one_two, "4", "resume", str(ckpt1), "sharded")
    parts = sorted((torch.load(p) for p in one_two.glob("loaded_rank*.pt")), key=lambda d: d["lo"])
    assert [p["cache"].shape[0] for p in parts] == [60, 60]  # each rank loaded only its rows
    assert torch.equal(torch.cat([p["cache"] for p in parts]), whole1)
    single_chosen = json.loads((single / "topk_chosen.json").read_text())
    assert json.loads((one_two / "resumed_here_chosen.json").read_text()) == [c for c in single_chosen if c[0] >= 2]
    ends = sorted((torch.load(p) for p in one_two.glob("resumed_here_rank*.pt")), key=lambda d: d["lo"])
    assert torch.equal(torch.cat([d["steps"] for d in ends]), torch.load(single / "topk_rank0.pt")["steps"])


def test_two_shard_checkpoint_with_a_torn_shard_is_refused_by_every_rank(tmp_path: Path) -> None:
    """Resuming from a 2-shard checkpoint one of whose shards is torn fails naming it, also for the rank whose own
    rows are intact (a checkpoint is complete only when every shard is)."""
    from hf_corrector.training.prepare import prepare_cache

    final, whole = _sharded(tmp_path, n=50, world=2)
    torn = final / shard_name(1, 2) / "cache.arrow"
    torn.write_bytes(torn.read_bytes()[:-16])
    with pytest.raises(CacheCorruptError, match=r"shard-00001-of-00002 .*torn"):
        prepare_cache(str(final), None, None, None, StaleCache, True, rows=(0, 25))
    shutil.rmtree(final / shard_name(1, 2))
    with pytest.raises(CacheCorruptError, match=r"shard-00001-of-00002 \(rows 25:50\) is missing"):
        StaleCache.load(final)


def test_sharded_evaluation_equals_one_process_without_gathering(tmp_path: Path) -> None:
    """2 gloo processes with a sharded cache evaluate fresh, stale and corrected corpora from their own rows (the
    per-process top-k merged, never the cache gathered) and get the single-process metrics."""
    from tests.test_multiprocess import SCRIPT, _launch_two_processes, _run

    multi, single = tmp_path / "multi", tmp_path / "single"
    multi.mkdir(), single.mkdir()
    _launch_two_processes(tmp_path, multi, "4", "evaluate", "sharded")
    _run([sys.executable, str(SCRIPT), str(single), "8", "evaluate", "replicated"], tmp_path)
    two, one = (json.loads((d / "eval.json").read_text()) for d in (multi, single))
    assert two["gathered"] == [0, 0]  # before: the stale / corrected corpus was gathered on every process
    keys = [k for k in one["metrics"] if "recall" in k or "ndcg" in k or "mrr" in k]
    assert any("_corrected_" in k for k in keys) and any("_stale_" in k for k in keys)
    assert {k: two["metrics"][k] for k in keys} == {k: one["metrics"][k] for k in keys}


def test_per_process_build_encodes_only_its_rows_and_equals_one_process(tmp_path: Path) -> None:
    """With cache_sharding="sharded" each of 2 gloo ranks encodes only its 60 rows (before: every rank encoded all
    120) and the two parts equal the one-process cache; with cache_build_dir a second launch resumes from the
    chunks each rank wrote and encodes nothing."""
    from tests.test_multiprocess import SCRIPT, _launch_two_processes, _run

    multi, again, single = tmp_path / "multi", tmp_path / "again", tmp_path / "single"
    for d in (multi, again, single):
        d.mkdir()
    build_dir = tmp_path / "build"
    _launch_two_processes(tmp_path, multi, "4", "build", "sharded", str(build_dir))
    _run([sys.executable, str(SCRIPT), str(single), "8", "build", "replicated"], tmp_path)
    one = torch.load(single / "build_rank0.pt")
    assert sorted(one["encoded"]) == list(range(120))
    parts = sorted((torch.load(p) for p in multi.glob("build_rank*.pt")), key=lambda d: d["lo"])
    assert [sorted(p["encoded"]) for p in parts] == [list(range(0, 60)), list(range(60, 120))]
    assert [p["initial_cache_encodings"] for p in parts] == [120, 120]  # a corpus pass counts N on every process
    assert torch.equal(torch.cat([p["cache"] for p in parts]), one["cache"])
    assert parts[0]["doc_ids"] + parts[1]["doc_ids"] == one["doc_ids"]
    assert parts[0]["provenance"] == one["provenance"]  # the whole corpus's fingerprints, as one process records
    assert sorted(p.name for p in build_dir.glob("shard-*.npy")) == ["shard-00000-rows-0-60.npy",
                                                                      "shard-00000-rows-60-120.npy"]
    _launch_two_processes(tmp_path, again, "4", "build", "sharded", str(build_dir))
    resumed = sorted((torch.load(p) for p in again.glob("build_rank*.pt")), key=lambda d: d["lo"])
    assert [p["encoded"] for p in resumed] == [[], []]
    assert torch.equal(torch.cat([p["cache"] for p in resumed]), one["cache"])
