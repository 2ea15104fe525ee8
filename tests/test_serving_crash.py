"""A served save is atomic as a whole under real SIGKILLs (issue 23): after a kill at any moment the target holds the
previous served index or the new one, complete and verified, never vectors of one save beside the index of another;
a first save killed leaves no target at all."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hf_corrector import StaleCache
from hf_corrector.errors import CacheCorruptError
from hf_corrector.serving import CorrectedIndex
from tests.serving_crash_child import KILL_POINTS
from tests.tiny import tiny_data, tiny_retriever

REPO = Path(__file__).resolve().parents[1]
KILLED = -signal.SIGKILL


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, CorrectedIndex]:
    out = tmp_path_factory.mktemp("served_crash")
    train, _ = tiny_data()
    retriever = tiny_retriever(out)
    cache = StaleCache.build(train.corpus, retriever, batch_size=32, show_progress_bar=False)
    index = CorrectedIndex(cache, show_progress_bar=False)
    return index.save(out / "source"), index


def _child(source: Path, dest: Path, point: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.serving_crash_child", str(source), str(dest), point],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _version(index: CorrectedIndex) -> int:
    return int(index.vectors.steps[0])


def test_killed_saves_leave_the_old_index_or_none(source, tmp_path):
    src, original = source
    jobs = {}
    for point in KILL_POINTS:
        over = tmp_path / point / "served"
        original.save(over)  # an existing served index, overwritten by the killed save
        fresh = tmp_path / point / "fresh"  # a first save
        jobs[point] = (over, fresh, _child(src, over, point), _child(src, fresh, point))
    for point, (over, fresh, p_over, p_fresh) in jobs.items():
        assert p_over.wait(240) == KILLED, p_over.stderr.read()
        assert p_fresh.wait(240) == KILLED, p_fresh.stderr.read()
        loaded = CorrectedIndex.load(over)  # verified: checksums, fingerprint, sample search
        expected = 7 if point == "after_swap" else -1
        assert _version(loaded) == expected, point
        if point == "after_swap":
            assert CorrectedIndex.load(fresh).vectors.steps[0] == 7
        else:
            assert not fresh.exists(), point
        # temporaries are hidden, never loadable as a served index, and removed by the next save or load
        hidden = [p for p in (tmp_path / point).iterdir() if p.name.startswith(".")]
        for folder in hidden:
            with pytest.raises((CacheCorruptError, FileNotFoundError)):
                CorrectedIndex.load(folder)
        original.save(over)
        if fresh.exists():
            CorrectedIndex.load(fresh)
        else:
            original.save(fresh)
        assert sorted(p.name for p in (tmp_path / point).iterdir()) == ["fresh", "served"], point


def test_sigkill_at_a_random_moment_leaves_one_complete_version(source, tmp_path):
    src, original = source
    rng = random.Random(0)
    dest = tmp_path / "served"
    original.save(dest)
    for _ in range(3):
        proc = _child(src, dest, "loop")
        first = proc.stdout.readline()  # one save done: the loop is running
        assert first.startswith("saved"), proc.stderr.read()
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        loaded = CorrectedIndex.load(dest)
        version = _version(loaded)
        assert version >= 1
        row0 = torch.nn.functional.normalize(torch.full((loaded.vectors.dim,), float(version))
                                             + torch.arange(loaded.vectors.dim), dim=0)
        assert torch.allclose(loaded.vectors.matrix()[0].float(), row0, atol=1e-6)
        assert torch.equal(loaded.vectors.matrix()[1:], original.vectors.matrix()[1:])
    original.save(dest)  # the next save removes what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]
