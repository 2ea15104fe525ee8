"""StaleCache.save never removes what it did not write; leftovers of killed saves are cleaned up safely.

Issue 13 ("Data loss"): saving into a training ``output_dir`` wiped its checkpoints and model, saving onto a file
hid it, and killed saves left hidden ``.NAME.tmp-*`` folders that nothing removed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_corrector import StaleCache
from hf_corrector.cache import remove_leftovers
from hf_corrector import atomic_io
from hf_corrector.cache import folder as cache_folder
from hf_corrector.errors import UnsafeOverwriteError


def _cache(n: int = 20, d: int = 4, seed: int = 0) -> StaleCache:
    gen = torch.Generator().manual_seed(seed)
    return StaleCache([f"d{i}" for i in range(n)], torch.randn(n, d, generator=gen))


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _training_output_dir(root: Path) -> Path:
    out = root / "out"
    (out / "checkpoint-500").mkdir(parents=True)
    (out / "checkpoint-500" / "model.safetensors").write_bytes(b"weights-at-500")
    (out / "checkpoint-500" / "trainer_state.json").write_text('{"global_step": 500}')
    (out / "model.safetensors").write_bytes(b"final-weights")
    (out / "config.json").write_text("{}")
    return out


def test_save_into_a_training_output_dir_is_refused_and_nothing_is_touched(tmp_path: Path) -> None:
    out = _training_output_dir(tmp_path)
    before = _tree(out)
    with pytest.raises(UnsafeOverwriteError) as err:
        _cache().save(out)
    message = str(err.value)
    assert str(out) in message and "checkpoint-500" in message and "model.safetensors" in message
    assert str(out / "stale_cache") in message  # says what to do instead
    assert _tree(out) == before  # every checkpoint and model file survives, byte for byte
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and no temporary is left beside it
    _cache().save(out / "stale_cache")  # the suggested subfolder works
    assert _tree(out).items() >= before.items()


@pytest.mark.parametrize("foreign", ["notes.txt", "README.md-only", "subfolder", "cache.arrow-without-info"])
def test_a_folder_holding_anything_but_a_cache_is_refused(tmp_path: Path, foreign: str) -> None:
    target = tmp_path / "c"
    target.mkdir()
    if foreign == "notes.txt":
        _cache().save(target)
        (target / "notes.txt").write_text("mine")
    elif foreign == "README.md-only":
        (target / "README.md").write_text("my project")
    elif foreign == "subfolder":
        _cache().save(target)
        (target / "cache.arrow.d").mkdir()
    else:
        (target / "cache.arrow").write_bytes(b"someone's arrow file")
    before = _tree(target)
    with pytest.raises(UnsafeOverwriteError, match=str(target)):
        _cache(seed=1).save(target)
    assert _tree(target) == before


def test_save_onto_an_existing_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    target.write_text('{"ndcg": 0.7}')
    with pytest.raises(UnsafeOverwriteError, match="existing file"):
        _cache().save(target)
    assert target.read_text() == '{"ndcg": 0.7}'
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafeOverwriteError, match="symbolic link"):
        _cache().save(link)
    assert link.is_symlink()


def test_replacing_a_cache_folder_and_an_empty_folder_still_works(tmp_path: Path) -> None:
    target = tmp_path / "c"
    _cache(seed=0).save(target, card="# my cache card\n")
    assert (target / "README.md").read_text() == "# my cache card\n"
    newer = _cache(seed=1)
    newer.save(target)  # a cache folder (cache.arrow, cache_info.json, README.md) is replaced
    assert torch.equal(StaleCache.load(target).matrix(), newer.matrix())
    assert sorted(p.name for p in target.iterdir()) == ["cache.arrow", "cache_info.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    newer.save(empty)
    assert torch.equal(StaleCache.load(empty).matrix(), newer.matrix())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "empty"]  # no temporaries left


def test_files_appearing_during_the_swap_are_kept(tmp_path: Path) -> None:
    """The replaced folder loses only its cache files, even if a file appears in it after the check."""
    target = tmp_path / "c"
    _cache().save(target)
    original = atomic_io.install_dir

    def racing(tmp_dir: Path, final_dir: Path, **kwargs) -> None:  # noqa: ANN003
        (final_dir / "late.txt").write_text("written by someone else meanwhile")
        original(tmp_dir, final_dir, **kwargs)

    atomic_io.install_dir = racing
    try:
        _cache(seed=1).save(target)
    finally:
        atomic_io.install_dir = original
    kept = [p for p in tmp_path.rglob("late.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "written by someone else meanwhile"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(parent: Path, name: str, kind: str, pid: int) -> Path:
    folder = parent / f".{name}.{kind}-{atomic_io._HOST_TAG}-{pid}-0123abcd"
    folder.mkdir()
    (folder / "cache.arrow").write_bytes(b"\0" * 1000)  # a torn write
    return folder


def test_leftovers_of_dead_writers_are_removed_by_the_next_save_and_load(tmp_path: Path) -> None:
    target = tmp_path / "c"
    dead = _dead_pid()
    tmp_left, old_left = _leftover(tmp_path, "c", "tmp", dead), _leftover(tmp_path, "c", "old", dead)
    other_target = _leftover(tmp_path, "other", "tmp", dead)  # a leftover of another target: not ours to touch
    _cache().save(target)
    assert not tmp_left.exists() and not old_left.exists() and other_target.exists()
    again = _leftover(tmp_path, "c", "tmp", dead)
    StaleCache.load(target)
    assert not again.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c", other_target.name])


def test_a_live_writers_temporary_is_never_removed(tmp_path: Path) -> None:
    target = tmp_path / "c"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = _leftover(tmp_path, "c", "tmp", writer.pid)
        mine = _leftover(tmp_path, "c", "tmp", os.getpid())
        foreign_host = tmp_path / f".c.tmp-ffffffff-{_dead_pid()}-0123abcd"
        if atomic_io._HOST_TAG == "ffffffff":  # pragma: no cover - a one-in-4-billion host name
            pytest.skip("host tag collides with the test's foreign host")
        foreign_host.mkdir()
        _cache().save(target)
        StaleCache.load(target)
        assert remove_leftovers(target) == []
        assert live.exists() and (live / "cache.arrow").stat().st_size == 1000
        assert mine.exists() and foreign_host.exists()
    finally:
        writer.kill()
        writer.wait()
    assert remove_leftovers(target) == [live]  # once the writer is gone


def test_leftovers_holding_foreign_files_and_fresh_legacy_names_are_kept(tmp_path: Path) -> None:
    target = tmp_path / "c"
    dead = _dead_pid()
    odd = _leftover(tmp_path, "c", "tmp", dead)
    (odd / "thesis.tex").write_text("not a cache file")
    legacy_fresh = tmp_path / ".c.tmp-k2j4_x9a"  # tempfile.mkdtemp name of an older hf_corrector: no pid
    legacy_fresh.mkdir()
    (legacy_fresh / "cache.arrow").write_bytes(b"x")
    legacy_old = tmp_path / ".c.old-1a2b3c4d"
    legacy_old.mkdir()
    (legacy_old / "cache_info.json").write_text("{}")
    hours_ago = time.time() - 2 * atomic_io.LEGACY_LEFTOVER_AGE_S
    os.utime(legacy_old / "cache_info.json", (hours_ago, hours_ago))
    os.utime(legacy_old, (hours_ago, hours_ago))
    removed = remove_leftovers(target)
    assert removed == [legacy_old]
    assert (odd / "thesis.tex").read_text() == "not a cache file" and not (odd / "cache.arrow").exists()
    assert legacy_fresh.exists()


def test_a_failed_save_leaves_the_previous_cache_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "c"
    first = _cache()
    first.save(target)
    original = cache_folder.write_stream

    def failing(table, path):  # noqa: ANN001
        path.write_bytes(b"torn")
        raise OSError("disk full")

    cache_folder.write_stream = failing
    try:
        with pytest.raises(OSError, match="disk full"):
            _cache(seed=1).save(target)
    finally:
        cache_folder.write_stream = original
    assert torch.equal(StaleCache.load(target).matrix(), first.matrix())
    assert [p.name for p in tmp_path.iterdir()] == ["c"]
