"""Issue 21: the initial cache build of one process (cache/rank_build.py): only its rows encoded, the whole cache's
provenance, chunks written atomically on a global grid, reused by one-process and per-process builds alike."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_corrector import CacheMismatchError, StaleCache
from hf_corrector.cache.rank_build import build_rows, chunks
from hf_corrector.cache.sharded_store import check_part_provenance
from tests.tiny import tiny_data, tiny_retriever


def _counting(retriever):
    encoded = []
    encode = retriever.encode_targets
    retriever.encode_targets = lambda texts, **kw: encoded.extend(texts) or encode(texts, **kw)
    return encoded


def test_chunks_follow_the_global_grid():
    assert chunks(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunks(5, 13, 4) == [(5, 8), (8, 12), (12, 13)]
    assert chunks(7, 7, 4) == []


def test_part_build_equals_the_whole_build_and_resumes_from_any_split(tmp_path: Path):
    corpus = tiny_data()[0].corpus
    retriever = tiny_retriever(tmp_path, dropout=0.0)
    texts = list(corpus["text"])
    whole = StaleCache.build(corpus, retriever, batch_size=1, shard_dir=tmp_path / "one", shard_size=16,
                             show_progress_bar=False)  # a one-process build's chunks: shard-00000.npy ... 00007
    encoded = _counting(retriever)
    part = build_rows(corpus, retriever, (40, 100), batch_size=1, dtype="float16", show_progress_bar=False)
    assert encoded == texts[40:100] and (part.row_offset, len(part), part.total_rows) == (40, 60, 120)
    assert part.dtype == "float16" and torch.equal(part.matrix(), whole.matrix()[40:100].half())
    check_part_provenance(part, "built", list(corpus["doc_id"]), texts, retriever, max_length=None)
    assert part.provenance["texts_fingerprint"] == whole.provenance["texts_fingerprint"]

    encoded.clear()  # rows 40:100 from the one-process chunks: only the cut pieces 40:48 and 96:100 are encoded
    again = build_rows(corpus, retriever, (40, 100), batch_size=1, shard_dir=tmp_path / "one", shard_size=16,
                       show_progress_bar=False)
    assert encoded == texts[40:48] + texts[96:100] and torch.equal(again.matrix(), whole.matrix()[40:100])
    assert (tmp_path / "one" / "shard-00002-rows-40-48.npy").is_file()

    other = tiny_retriever(tmp_path, seed=1, dropout=0.0)  # other weights: the chunks are refused, not mixed in
    with pytest.raises(CacheMismatchError, match="encoded by other weights"):
        build_rows(corpus, other, (0, 60), shard_dir=tmp_path / "one", shard_size=16, show_progress_bar=False)
