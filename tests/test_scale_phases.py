"""Issue 21: every phase of a sharded run holds only its rows: sharded cache folders (one shard per process and a
manifest), the 2-process recipe run that saves, serves and pushes the whole corpus, and the refusals."""

from __future__ import annotations

import json
import shutil
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


def test_two_process_sharded_recipe_saves_and_serves_the_whole_corpus(tmp_path: Path) -> None:
    """A 2-process cache_sharding="sharded" recipe run (the README's command) leaves stale_cache/ and the served
    index with all 60 rows (before the fix: rank 0's 30)."""
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
