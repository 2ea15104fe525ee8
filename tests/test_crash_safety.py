"""Crash safety: real processes are SIGKILLed while building a cache, saving one, saving a checkpoint, refreshing
and writing back; what is left on disk must be either complete or rejected, and resuming must end exactly where an
uninterrupted run ends.

The scenarios are in :mod:`tests.crash_child`. Each runs in its own process, forked from a forkserver that has
imported torch, transformers and hf_corrector once (a fresh interpreter per scenario would spend most of the test
time importing); the kill is a real ``SIGKILL`` of that process, sent by itself at the chosen point.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers.trainer_utils import get_last_checkpoint

from hf_corrector import StaleCache
from hf_corrector.cache.schema import CACHE_FILE, INFO_FILE
from hf_corrector.errors import CacheCorruptError, HFCorrectorError
from hf_corrector.training.checkpoints import (CHECKPOINT_MARKER, checkpoint_problem, last_complete_checkpoint,
                                               verify_checkpoint)
from tests import crash_child
from tests.tiny import tiny_data, tiny_retriever

KILLED = -signal.SIGKILL
_CONTEXT = None


@pytest.fixture(autouse=True)
def one_torch_thread(one_thread):
    """In-process parts run on one thread (see conftest.one_thread), like the crash-test children."""


def run_children(*calls, timeout: float = 300) -> list[int]:
    """Run ``(function, kwargs)`` pairs of :mod:`tests.crash_child` in parallel processes; their exit codes."""
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = multiprocessing.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["tests.crash_child"])
    procs = [_CONTEXT.Process(target=fn, kwargs=kwargs) for fn, kwargs in calls]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail(f"child {p.name} did not finish in {timeout}s")
    return [p.exitcode for p in procs]


# -- (a) cache build with shard_dir -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kill_in_write", [False, True], ids=["killed-encoding", "killed-writing-shard"])
def test_cache_build_resumes_from_shards_after_sigkill(tmp_path, kill_in_write):
    k = 3
    assert run_children((crash_child.build_cache, dict(folder=str(tmp_path), kill_after_shards=k,
                                                        kill_in_write=kill_in_write))) == [KILLED]
    shards = tmp_path / "shards"
    assert sorted(p.name for p in shards.glob("shard-*.npy")) == [f"shard-{i:05d}.npy" for i in range(k)]
    if kill_in_write:  # the torn file is a hidden temporary, never a shard
        assert [p.name for p in shards.iterdir() if p.name.startswith(".")]

    assert run_children((crash_child.build_cache, dict(folder=str(tmp_path), reference=True))) == [0]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["encoded_texts"] == report["num_docs"] - k * crash_child.SHARD_SIZE  # only the missing shards
    resumed, reference = np.load(tmp_path / "resumed.npy"), np.load(tmp_path / "reference.npy")
    assert resumed.shape == (report["num_docs"], 32)
    assert np.array_equal(resumed, reference)


# -- (b) StaleCache.save killed half-way through cache.arrow ----------------------------------------------------------
@pytest.fixture(scope="module")
def saved_cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    train, _ = tiny_data()
    cache = StaleCache.build(train.corpus, tiny_retriever(folder), batch_size=64, show_progress_bar=False)
    cache.save(folder / "cache")
    return folder / "cache", cache


def test_killed_save_keeps_previous_cache_and_leaves_nothing_loadable(saved_cache, tmp_path):
    path, original = saved_cache
    fresh = tmp_path / "never-saved"
    codes = run_children((crash_child.save_cache, dict(source=str(path), dest=str(path))),
                         (crash_child.save_cache, dict(source=str(path), dest=str(fresh))))
    assert codes == [KILLED, KILLED]
    again = StaleCache.load(path)  # the overwrite never happened: the old cache, intact and verified
    assert torch.equal(again.matrix(), original.matrix()) and again.doc_ids == original.doc_ids
    assert int(again.steps.max()) == -1
    leftovers = [p for p in list(path.parent.iterdir()) + list(tmp_path.iterdir()) if p.name.startswith(".")]
    assert len(leftovers) == 1  # fresh's unfinished temporary, hidden (loading path removed the dead one beside it)
    for folder in leftovers:
        with pytest.raises(CacheCorruptError):
            StaleCache.load(folder)
    assert not fresh.exists()
    with pytest.raises(FileNotFoundError, match="no such folder.*never-saved"):
        StaleCache.load(fresh)


@pytest.mark.parametrize("damage", ["truncate", "flip-byte", "truncate-rows-check"])
def test_damaged_cache_file_with_intact_info_is_rejected(saved_cache, tmp_path, damage):
    path, _ = saved_cache
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    data = copy / CACHE_FILE
    raw = data.read_bytes()
    if damage.startswith("truncate"):
        data.write_bytes(raw[: len(raw) * 2 // 3])
    else:
        data.write_bytes(raw[:-200] + bytes([raw[-200] ^ 0xFF]) + raw[-199:])
    assert (copy / INFO_FILE).is_file()
    with pytest.raises(CacheCorruptError, match="cache.arrow"):
        StaleCache.load(copy, verify="rows" if damage == "truncate-rows-check" else "checksum")


# -- (c, d) training killed mid-checkpoint, mid-refresh, mid-write-back -----------------------------------------------
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """The uninterrupted run (in a child like the others, so every run computes with the same settings)."""
    out = tmp_path_factory.mktemp("reference")
    assert run_children((crash_child.train, dict(out_dir=str(out)))) == [0]
    return out


def _assert_same_final(run: Path, reference: Path) -> None:
    for name in ("model.safetensors", "corrector/model.safetensors"):
        mine, theirs = load_file(str(run / "final" / name)), load_file(str(reference / "final" / name))
        assert mine.keys() == theirs.keys()
        for key in theirs:
            diff = (mine[key].float() - theirs[key].float()).abs().max().item() if mine[key].numel() else 0.0
            assert torch.equal(mine[key], theirs[key]), f"{name}:{key} differs (max abs diff {diff})"
    mine, theirs = StaleCache.load(run / "final_cache"), StaleCache.load(reference / "final_cache")
    assert torch.equal(mine.matrix(), theirs.matrix()) and torch.equal(mine.steps, theirs.steps)


# kill point -> (last complete checkpoint, the torn one that a plain get_last_checkpoint would pick, save_total_limit)
SCENARIOS = {
    # cache.arrow of checkpoint-8 half written: the cache is written with the model files into a temporary folder
    # that becomes checkpoint-8 only when complete, so no torn checkpoint-8 exists; limit 1 kept checkpoint-4
    "checkpoint_cache": (4, None, 1),
    "optimizer": (4, 8, None),  # optimizer.pt of checkpoint-8 torn
    "refresh": (4, None, None),  # killed half-way through the full refresh at step 6
    "write_back": (8, None, None),  # killed in the write-back of step 10
    "final_checkpoint": (12, None, None),  # killed after the checkpoint at max_steps: resuming must not step again
}


@pytest.mark.parametrize("kill", list(SCENARIOS))
def test_training_killed_resumes_from_last_complete_checkpoint(reference_run, tmp_path, kill):
    complete, torn, limit = SCENARIOS[kill]
    out = tmp_path / "run"
    assert run_children((crash_child.train, dict(out_dir=str(out), kill=kill, save_total_limit=limit))) == [KILLED]

    good = out / f"checkpoint-{complete}"
    assert last_complete_checkpoint(out) == str(good)
    verify_checkpoint(good)
    StaleCache.load(good / "stale_cache")
    if torn is not None:
        bad = out / f"checkpoint-{torn}"
        assert get_last_checkpoint(str(out)) == str(bad)  # what plain Trainer would have resumed from
        assert not (bad / CHECKPOINT_MARKER).exists() and checkpoint_problem(bad)
        with pytest.raises(CacheCorruptError, match=f"checkpoint-{torn}"):
            crash_child.make_trainer(out, save_total_limit=limit).train(resume_from_checkpoint=str(bad))
        assert bad.exists()  # skipped, never deleted

    assert run_children((crash_child.train, dict(out_dir=str(out), resume=True, save_total_limit=limit))) == [0]
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"] == str(good) and report["global_step"] == 12
    if torn is not None:
        assert any(f"skipping incomplete checkpoint {out / f'checkpoint-{torn}'}" in m for m in report["log"])
    _assert_same_final(out, reference_run)
    assert report["cost"] == json.loads((reference_run / "report.json").read_text())["cost"]
    assert last_complete_checkpoint(out) == str(out / "checkpoint-12")


def test_explicit_checkpoint_without_marker_is_refused(tmp_path):
    (tmp_path / "checkpoint-3").mkdir()
    with pytest.raises(HFCorrectorError, match="checkpoint-3.*not a complete checkpoint"):
        crash_child.make_trainer(tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_marker_detects_files_changed_after_the_save(reference_run, tmp_path):
    copy = tmp_path / "checkpoint-4"
    shutil.copytree(reference_run / "checkpoint-4", copy)
    assert checkpoint_problem(copy) is None
    (copy / "scheduler.pt").write_bytes(b"x")
    assert "scheduler.pt" in checkpoint_problem(copy)
    (copy / "scheduler.pt").unlink()
    assert "missing" in checkpoint_problem(copy)
    assert last_complete_checkpoint(tmp_path) is None


def test_final_save_model_is_atomic_and_leaves_no_temporaries(tmp_path):
    out = tmp_path / "out"
    trainer = crash_child.make_trainer(out)
    final = tmp_path / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")  # an earlier save: replaced as a whole
    trainer.save_model(str(final))
    assert json.loads((final / "config.json").read_text())["model_type"]
    assert (final / "corrector" / "model.safetensors").is_file()
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"state")
    trainer.save_model()  # into output_dir, next to checkpoints: moved in entry by entry, checkpoints untouched
    assert (out / "checkpoint-2" / "optimizer.pt").read_bytes() == b"state"
    assert (out / "model.safetensors").is_file() and (out / "corrector" / "model.safetensors").is_file()
    assert not [p for p in list(tmp_path.iterdir()) + list(out.iterdir()) if p.name.startswith(".")]


def test_resume_from_the_last_checkpoint_of_an_epoch_based_run_does_not_step(tmp_path):
    """num_train_epochs=1.5 over 5 batches per epoch: max_steps 8, which ends no epoch. Before the fix, resuming
    from checkpoint-8 skipped 3 batches of epoch 2 and trained step 9."""
    from tests.tiny import tiny_trainer

    kw = dict(max_steps=-1, num_train_epochs=1.5, save_strategy="steps", save_steps=4, cache_write_back=True)
    full = tiny_trainer(tmp_path, "a", **kw)
    assert full.train().global_step == 8
    resumed = tiny_trainer(tmp_path, "b", **kw)
    output = resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-8"))
    assert output.global_step == 8 and resumed.state.global_step == 8
    mine, theirs = resumed.model.state_dict(), full.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert torch.equal(resumed.cache.matrix(), full.cache.matrix()) and resumed.cost == full.cost
    assert resumed.state.log_history[-1]["reembedding_total"] == full.state.log_history[-1]["reembedding_total"]


# -- (e) killed at random moments, resumed, compared bit for bit ------------------------------------------------------
RANDOM_KILLS = 20  # killed runs wanted (runs whose kill came after the end are checked too, but not counted)


def _same_final(run: Path, reference: Path) -> str | None:
    """None if ``run`` ended bit-identical to ``reference`` (weights, corrector, cache, cost), else the difference."""
    try:
        _assert_same_final(run, reference)
    except AssertionError as err:
        return str(err).splitlines()[0]
    mine, theirs = (json.loads((p / "report.json").read_text()) for p in (run, reference))
    if (mine["global_step"], mine["cost"]) != (theirs["global_step"], theirs["cost"]):
        return f"global_step/cost {mine['global_step']} {mine['cost']} != {theirs['global_step']} {theirs['cost']}"
    return None


@pytest.mark.slow
def test_random_kills_resume_bit_identical(reference_run, tmp_path):
    """SIGKILL the crash tests' run at a random moment of training or saving, resume from the last complete
    checkpoint (or start afresh if there is none), and compare with the uninterrupted run; repeated until
    RANDOM_KILLS runs were killed, two runs at a time. Prints one line per run and the count.

    The moment: a random step s in [0, 12) and a random delay in [0, 3 x the mean step time of the uninterrupted
    run) after step s+1 begins (a timer thread in the child sends SIGKILL), so the kills land in steps, checkpoint
    saves, refreshes, write-backs and the final save_model, however busy the machine is."""
    import random

    seed = random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    reference = json.loads((reference_run / "report.json").read_text())
    window = 3 * reference["seconds"] / reference["global_step"]
    print(f"\nrandom kills: seed {seed}; the uninterrupted run trains and saves in {reference['seconds']:.2f}s; "
          f"kill window {window:.3f}s after a random step begins")
    results = []
    while sum(r[2] == KILLED for r in results) < RANDOM_KILLS and len(results) < 2 * RANDOM_KILLS:
        runs = [(tmp_path / f"run-{i}", rng.randrange(reference["global_step"]), rng.uniform(0.0, window))
                for i in range(len(results), len(results) + 2)]
        codes = run_children(*[(crash_child.train, dict(out_dir=str(out), kill_at_step=step, kill_after=delay))
                               for out, step, delay in runs])
        resumed = run_children(*[(crash_child.train, dict(out_dir=str(out), resume="auto")) for out, _, _ in runs])
        for (out, step, delay), code, code2 in zip(runs, codes, resumed):
            report = json.loads((out / "report.json").read_text()) if code2 == 0 else {}
            problem = _same_final(out, reference_run) if code2 == 0 else f"resume exited with {code2}"
            results.append((out.name, delay, code, report.get("resumed_from"), problem))
            torn = any("skipping incomplete" in m for m in report.get("log", []))
            print(f"  {out.name}: kill {delay:.3f}s into step {step + 1} -> exit {code}, resumed from "
                  f"{Path(report['resumed_from']).name if report.get('resumed_from') else None}"
                  f"{' (torn checkpoint skipped)' if torn else ''}: {'bit-identical' if problem is None else problem}")
    killed = [r for r in results if r[2] == KILLED]
    identical = [r for r in killed if r[4] is None]
    print(f"random kills: {len(identical)}/{len(killed)} killed runs ended bit-identical "
          f"({len(results) - len(killed)} finished before their kill)")
    assert len(killed) >= RANDOM_KILLS
    assert [r for r in results if r[4] is not None] == []
