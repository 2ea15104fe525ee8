"""Edges of the served index that were silently wrong (issue 23, second round): an approximate index that returned
fewer than k ids, an index kind lost between save and load, a faiss file of another kind, provenance edited beside a
valid manifest, a user's README.md deleted by a save, duplicate doc ids, and query containers whose iteration is not
the queries."""

from __future__ import annotations

import hashlib
import json
import types

import numpy as np
import pandas as pd
import pytest
import torch

from hf_corrector import CorrectorConfig, CorrectorModel, StaleCache
from hf_corrector.errors import CacheCorruptError, ConfigError, UnsafeOverwriteError
from hf_corrector.serving import CorrectedIndex, build_corrected_index
from tests.log_capture import warnings_of
from tests.tiny import tiny_data, tiny_retriever


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    out = tmp_path_factory.mktemp("edges")
    train, _ = tiny_data()
    retriever = tiny_retriever(out, seed=0)
    cache = StaleCache.build(train.corpus, retriever, batch_size=32, show_progress_bar=False)
    torch.manual_seed(0)
    corrector = CorrectorModel(CorrectorConfig(embedding_dim=retriever.embedding_dim, hidden_dim=16))
    texts = list(train.corpus["text"])
    index = build_corrected_index(retriever, corrector, cache, texts, reencode_budget=0.1, show_progress_bar=False)
    return types.SimpleNamespace(out=out, retriever=retriever, index=index, texts=texts)


def _rewrite_checksum(path):
    manifest_file = path / "serving_manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["index_sha256"] = hashlib.sha256((path / "index.faiss").read_bytes()).hexdigest()
    manifest_file.write_text(json.dumps(manifest))


# -- index kinds survive the round trip, and a file of another kind is refused ----------------------------------------
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_an_approximate_index_saves_and_loads_as_its_kind(setup, tmp_path, kind):
    served = CorrectedIndex(setup.index.vectors, retriever=setup.retriever, index_kind=kind, show_progress_bar=False)
    assert served.serving_info["index_kind"] == kind
    loaded = CorrectedIndex.load(served.save(tmp_path / "served"), retriever=setup.retriever)
    assert loaded.index_kind == kind and loaded.serving_info["index_kind"] == kind
    q = setup.index.vectors.matrix()[:4].float()
    assert loaded.search(q, k=5)[1] == served.search(q, k=5)[1]
    assert setup.index.serving_info["index_kind"] == "flat"  # the flat index it was made from is unchanged


@pytest.mark.parametrize("verify", ["checksum", "rows"])
def test_a_faiss_file_of_another_kind_is_refused_naming_it(setup, tmp_path, verify):
    flat = setup.index.save(tmp_path / "flat")
    hnsw = CorrectedIndex(setup.index.vectors, index_kind="hnsw", show_progress_bar=False).save(tmp_path / "hnsw")
    flat_blob, hnsw_blob = (flat / "index.faiss").read_bytes(), (hnsw / "index.faiss").read_bytes()
    (flat / "index.faiss").write_bytes(hnsw_blob)  # the same vectors indexed as hnsw, in a folder saved flat
    (hnsw / "index.faiss").write_bytes(flat_blob)
    for path in (flat, hnsw):
        _rewrite_checksum(path)  # the checksum agrees: only the kind tells
        with pytest.raises(CacheCorruptError, match=r"index\.faiss.*not the '(flat|hnsw)' index"):
            CorrectedIndex.load(path, verify=verify)


# -- every query gets k rows, the exact top-k where faiss falls short -------------------------------------------------
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_k_equal_to_the_corpus_size_returns_every_row_for_every_query(setup, kind):
    served = CorrectedIndex(setup.index.vectors, index_kind=kind, show_progress_bar=False)
    if kind == "ivf":
        served.faiss_index.index.nprobe = 1  # one of the 3 lists: about 40 of the 120 rows reachable
    n = len(served)
    q = setup.index.vectors.matrix()[:6].float()
    with warnings_of("hf_corrector.serving.search") as records:
        scores, ids = served.search(q, k=n)
    assert scores.shape == (6, n) and all(len(row) == n and len(set(row)) == n for row in ids)
    exact_scores, exact_rows = (q @ setup.index.vectors.matrix().float().T).topk(n, dim=1)
    assert torch.allclose(scores, exact_scores, atol=1e-4)
    assert bool((scores[:, :-1] >= scores[:, 1:] - 1e-6).all())  # best first
    if kind == "ivf":
        assert any("fewer than k=120" in m for m in records), records
        assert [row[0] for row in ids] == [setup.index.doc_ids[j] for j in exact_rows[:, 0].tolist()]


def test_an_empty_index_returns_no_rows(setup):
    empty = CorrectedIndex(StaleCache([], torch.zeros(0, setup.index.vectors.dim)), show_progress_bar=False)
    scores, ids = empty.search(torch.ones(3, setup.index.vectors.dim), k=5)
    assert scores.shape == (3, 0) and ids == [[], [], []]


# -- query containers --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("queries", [
    pd.DataFrame({"query": ["binary search", "sort a list"]}),
    {"q1": "binary search", "q2": "sort a list"},
    {"binary search", "sort a list"},
], ids=["dataframe", "dict", "set"])
def test_containers_whose_iteration_is_not_the_queries_are_refused(setup, queries):
    with pytest.raises(ConfigError, match=r"pass a list.*tolist\(\)"):
        setup.index.search(queries, k=3)


def test_bytes_are_refused_saying_decode(setup):
    with pytest.raises(ConfigError, match=r"queries is bytes, not a string: decode it"):
        setup.index.search(b"binary search", k=3)


def test_a_series_and_a_string_array_search_like_a_list(setup):
    texts = ["binary search", "sort a list"]
    expected = setup.index.search(texts, k=3)
    for queries in (pd.Series(texts), np.array(texts), pd.DataFrame({"query": texts})["query"].values):
        scores, ids = setup.index.search(queries, k=3)
        assert ids == expected[1] and torch.allclose(scores, expected[0])


def test_queries_beyond_float32_are_refused_naming_the_range(setup):
    q = np.ones((2, setup.index.vectors.dim), dtype=np.float64)
    q[1, 0] = 1e300  # finite in float64, inf once cast to the float32 faiss searches with
    with pytest.raises(ConfigError, match=r"row 1 holds values beyond the float32 range"):
        setup.index.search(q, k=3)


# -- provenance beside a valid manifest ---------------------------------------------------------------------------
@pytest.mark.parametrize("edit", ["edited", "deleted"])
def test_an_edited_retriever_fingerprint_is_corruption(setup, tmp_path, edit):
    path = setup.index.save(tmp_path / "served")
    info_file = path / "vectors" / "cache_info.json"
    info = json.loads(info_file.read_text())
    serving = info["provenance"]["serving"]
    if edit == "edited":  # the fingerprint of another retriever: the refusal of other retrievers would pass it
        serving["retriever_weights_fingerprint"] = "sha256-v1:" + "0" * 64
    else:  # "recorded by an older version": only a warning before
        del serving["retriever_weights_fingerprint"]
    info_file.write_text(json.dumps(info))
    with pytest.raises(CacheCorruptError, match=r"provenance in cache_info\.json.*edited, or a field deleted"):
        CorrectedIndex.load(path, verify="rows")


def test_a_manifest_from_before_the_provenance_digest_still_loads(setup, tmp_path):
    path = setup.index.save(tmp_path / "served")
    manifest = json.loads((path / "serving_manifest.json").read_text())
    assert len(manifest.pop("provenance_sha256")) == 64
    (path / "serving_manifest.json").write_text(json.dumps(manifest))
    loaded = CorrectedIndex.load(path, retriever=setup.retriever)
    assert loaded.doc_ids == setup.index.doc_ids


# -- saves never delete a user's files ----------------------------------------------------------------------------
def test_a_readme_of_the_users_own_survives_a_save(setup, tmp_path):
    path = setup.index.save(tmp_path / "served")
    (path / "README.md").write_text("# my notes on this index\n")
    with pytest.raises(UnsafeOverwriteError, match="README.md"):
        setup.index.save(path)
    assert (path / "README.md").read_text() == "# my notes on this index\n"
    assert (path / "vectors" / "README.md").is_file()  # the card a save writes lives with the vectors
    CorrectedIndex.load(path)


# -- ids --------------------------------------------------------------------------------------------------------
def test_duplicate_doc_ids_are_refused_naming_both_rows(setup):
    vectors = setup.index.vectors
    ids = list(vectors.doc_ids)
    ids[7] = ids[2]
    with pytest.raises(ConfigError, match=rf"doc id '{ids[2]}' twice \(rows 2 and 7\)"):
        CorrectedIndex(StaleCache(ids, vectors.matrix()), show_progress_bar=False)
