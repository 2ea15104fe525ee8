"""Issue 21: ``cache_device`` (cache/placement.py): where the scanned rows live, nothing copied per step when they
are on the queries' device, and the on-device scan path (noise keys and exclusions as tensors) choosing exactly
what the CPU path chooses."""

from __future__ import annotations

import pytest
import torch

from hf_corrector import ConfigError, CorrectorTrainingArguments, StaleCache
from hf_corrector.cache import placement
from hf_corrector.cache.manager import CacheManager
from hf_corrector.negatives import topk
from hf_corrector.negatives.topk import batch_row_noise, row_noise, select_negatives


def _data(n=300, d=8, b=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    cache = torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(b, d, generator=g), dim=-1)
    exclude = [[i, (7 * i + 3) % n, (11 * i) % n] for i in range(b)]
    return cache, q, exclude


def test_resolve_cache_device(monkeypatch):
    cuda = torch.device("cuda", 0)
    assert placement.resolve_cache_device("auto", "cpu", 10**12) == torch.device("cpu")  # CPU runs: unchanged
    monkeypatch.setattr(placement, "_free_bytes", lambda device: 8 * 10**9)
    assert placement.resolve_cache_device("auto", cuda, 4 * 10**9) == cuda  # fits in half the free memory
    assert placement.resolve_cache_device("auto", cuda, 5 * 10**9) == torch.device("cpu")  # pinned host then
    assert placement.resolve_cache_device("cpu", cuda, 1) == torch.device("cpu")
    assert placement.resolve_cache_device("cuda:1", cuda, 1) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="cache_device must be 'auto', 'cpu' or a device string"):
        CorrectorTrainingArguments("out", cache_device="gpu0", use_cpu=True, report_to="none")
    assert CorrectorTrainingArguments("out", use_cpu=True, report_to="none").cache_device == "auto"


@pytest.mark.parametrize("method", ["topk", "gumbel"])
def test_device_path_chooses_what_the_cpu_path_chooses(monkeypatch, method):
    """Keys and exclusions as tensors (the accelerator path, forced here on CPU) give the same rows and scores."""
    cache, q, exclude = _data()
    kw = {"exclude": exclude, "method": method, "temperature": 0.3, "noise_keys": [f"k{i}" for i in range(6)],
          "seed": 3, "step": 5, "chunk_size": 64}
    cpu = select_negatives(q, cache, 7, **kw)
    monkeypatch.setattr(topk, "_device_path", lambda q: True)
    dev = select_negatives(q, cache, 7, **kw)
    assert torch.equal(dev.indices, cpu.indices) and torch.equal(dev.scores, cpu.scores)
    streams = torch.tensor(topk._streams(3, 5, ["a", "b"]))
    assert torch.equal(batch_row_noise(streams, 10, 40), torch.stack([row_noise(3, 5, k, (10, 40)) for k in "ab"]))


def test_rows_on_the_query_device_are_not_copied_per_step(monkeypatch):
    """cache_device equal to the queries' device: every chunk the scan reads is a view of the placed rows, and no
    tensor changes device during selection."""
    cache, q, exclude = _data()
    manager = CacheManager(StaleCache([f"d{i}" for i in range(300)], cache), [f"t{i}" for i in range(300)], None)
    manager.place(q.device)
    base = manager.cache.matrix().untyped_storage().data_ptr()
    reads, moves = [], []
    original_to = torch.Tensor.to

    def counting_to(self, *args, **kwargs):
        out = original_to(self, *args, **kwargs)
        if out.device != self.device:
            moves.append((self.device, out.device))
        return out

    def read(start, stop):
        chunk = manager.read_chunk(start, stop)
        reads.append(chunk.untyped_storage().data_ptr())
        return chunk

    monkeypatch.setattr(torch.Tensor, "to", counting_to)
    for step in range(3):
        select_negatives(q, read, 5, exclude=exclude, method="gumbel", noise_keys=list("abcdef"), seed=0,
                         step=step, chunk_size=64, num_rows=300)
    assert len(reads) == 3 * 5 and set(reads) == {base} and moves == []


def test_placed_copy_follows_write_back_and_refresh(monkeypatch):
    """A separate copy (pinned host memory on a GPU machine; a clone stands in for pinning here) is written by
    write-backs and rebuilt after a refresh, so the scan never reads stale rows."""
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: self.clone())
    cache, _, _ = _data(n=40)
    manager = CacheManager(StaleCache([f"d{i}" for i in range(40)], cache), [f"t{i}" for i in range(40)],
                           encode_targets=lambda texts, **kw: torch.ones(len(texts), 8), write_back=True)
    manager.place(torch.device("cpu"), pin=True)
    first = manager.read_chunk(0, 40)
    assert first.untyped_storage().data_ptr() != manager.cache.matrix().untyped_storage().data_ptr()
    manager.record_step(torch.tensor([3, 17]), torch.full((2, 8), 2.0), step=1)
    assert torch.equal(manager.read_chunk(0, 40), manager.cache.matrix()) and float(manager.read_chunk(3, 4)[0, 0]) == 2.0
    manager.refresh(step=2)
    assert torch.equal(manager.read_chunk(0, 40), torch.ones(40, 8))


def test_false_negative_ceiling_does_not_sync_per_chunk(monkeypatch):
    """With a max_scores ceiling the dropped-row counts stay on the scan's device until the end: the number of
    device-to-host copies does not grow with the number of chunks (before: one ``.cpu()`` per chunk)."""
    cache, q, exclude = _data()
    ceiling = torch.full((6,), 0.5)
    calls = []
    original_cpu = torch.Tensor.cpu
    monkeypatch.setattr(torch.Tensor, "cpu", lambda self, *a, **kw: calls.append(1) or original_cpu(self, *a, **kw))
    counts = {}
    for chunk in (300, 10):
        calls.clear()
        sel = select_negatives(q, cache, 5, exclude=exclude, max_scores=ceiling, chunk_size=chunk)
        counts[chunk] = len(calls)
        assert int(sel.dropped.sum()) > 0
    assert counts[10] == counts[300]
