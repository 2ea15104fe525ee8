"""Habits of ``RetrievalData.from_records`` and ``StaleCache`` used directly: qrels dicts, repeated ids, numpy ids,
non-string text, and a cache refusing duplicate / unnormalised ids, bad write-back rows, bad steps, a wrong
provenance dimension and complex values (each refused naming the argument, the row or the id)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from hf_corrector.cache.ids import _SUSPECT, normalize_ids
from hf_corrector.cache.stale_cache import StaleCache
from hf_corrector.data import load_beir
from hf_corrector.data.format import RetrievalData, normalize_id
from hf_corrector.errors import ConfigError, DataFormatError
from tests.log_capture import warnings_of

CORPUS = [{"doc_id": "1", "text": "one"}, {"doc_id": "2", "text": "two"}, {"doc_id": "3", "text": "three"}]


def _one(**query):
    return RetrievalData.from_records([{"query_id": "q", "query": "a query", **query}], CORPUS)


# -- from_records ---------------------------------------------------------------------------------------------------
def test_a_qrels_dict_gives_the_ids_scored_above_zero():
    data = _one(positive_ids={"1": 1, "2": 0, 3: 2.5, "x": -1} | {})  # "x" is not in the corpus: never a positive
    assert data.queries["positive_ids"][0] == ["1", "3"]


def test_a_qrels_dict_with_a_bad_score_is_refused_naming_the_id():
    with pytest.raises(DataFormatError, match=r"query row 0: .*doc id '1' is 'yes', not a finite number"):
        _one(positive_ids={"1": "yes"})
    with pytest.raises(DataFormatError, match=r"negative_ids is a dict"):
        _one(positive_ids=["1"], negative_ids={"2": 1})


def test_repeated_ids_are_kept_once_with_a_warning_naming_the_query():
    with warnings_of("hf_corrector.data.format") as found:
        data = _one(positive_ids=[1, "1", " 1", "2"], negative_ids=[3, "3"])
    text = "\n".join(found)
    assert data.queries["positive_ids"][0] == ["1", "2"] and data.queries["negative_ids"][0] == ["3"]
    assert "query 'q'" in text and "positive_ids" in text and "negative_ids" in text


@pytest.mark.parametrize("key, value", [("query", 5), ("query", ["a"]), ("text", 7)])
def test_non_string_text_is_refused_naming_the_row(key, value):
    queries = [{"query_id": "q", "query": value if key == "query" else "a query", "positive_ids": ["1"]}]
    corpus = [dict(CORPUS[0], text=value)] + CORPUS[1:] if key == "text" else CORPUS
    where = "corpus row 0" if key == "text" else "query row 0"
    with pytest.raises(DataFormatError, match=rf"{where}: {key} must be a string, got"):
        RetrievalData.from_records(queries, corpus)


def test_numpy_integer_ids_are_ids_as_python_ints_are():
    data = RetrievalData.from_records(
        [{"query_id": np.int64(7), "query": "a query", "positive_ids": np.array([1, 2]),
          "negative_ids": [np.int32(3)]}],
        [{"doc_id": np.int64(i), "text": t} for i, t in [(1, "one"), (2, "two"), (3, "three")]])
    assert data.queries["query_id"] == ["7"] and data.queries["positive_ids"][0] == ["1", "2"]
    assert data.queries["negative_ids"][0] == ["3"] and data.corpus["doc_id"] == ["1", "2", "3"]
    assert normalize_id(np.uint8(4), "row 0") == "4"
    with pytest.raises(DataFormatError, match="positive_ids must be a list of ids"):
        _one(positive_ids=np.int64(1))


def test_a_float_id_gets_the_same_hint_in_beir_and_from_records(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(json.dumps({"_id": 1.0, "text": "one"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q", "text": "a query"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq\t1\t1\n")
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:1: .*got a number \(a float id such as 1\.0"):
        load_beir(tmp_path, split="test")
    with pytest.raises(DataFormatError, match=r"got float64 .*\(a float id such as 1\.0"):
        _one(positive_ids=[np.float64(1.0)])


# -- StaleCache ids ---------------------------------------------------------------------------------------------------
def test_duplicate_cache_ids_are_refused_naming_the_id_and_both_rows():
    with pytest.raises(ConfigError, match=r"doc id 'b' twice \(rows 1 and 3\)"):
        StaleCache(["a", "b", "c", "b"], torch.zeros(4, 2))
    with pytest.raises(ConfigError, match=r"doc id '1' twice \(rows 0 and 1\)"):
        StaleCache([1, " 1"], torch.zeros(2, 2))  # the same id once normalised


def test_cache_ids_are_normalised_like_the_loaders():
    assert StaleCache([1, " b ", np.int64(3)], torch.zeros(3, 2)).doc_ids == ["1", "b", "3"]
    for bad, match in [(None, "got NoneType"), (1.0, "a float id"), ("a\tb", "cannot store"), ("  ", "is empty")]:
        with pytest.raises(ConfigError, match=rf"row 1: doc id .*{match}"):
            StaleCache(["a", bad], torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="must be a list of ids"):
        StaleCache("abc", torch.zeros(3, 2))


def test_the_vectorised_check_knows_every_character_python_strips():
    """The fast path (Arrow's regular expression) flags an id exactly when Python's strip() would change it."""
    chars = [chr(c) for c in range(0x20, sys.maxunicode + 1) if c != 0x7F and not 0xD800 <= c <= 0xDFFF]
    for ids in ([f"a{ch}" for ch in chars], [f"{ch}a" for ch in chars]):
        flagged = pc.match_substring_regex(pa.array(ids, type=pa.string()), _SUSPECT).to_pylist()
        assert flagged == [ch.isspace() for ch in chars]
    assert normalize_ids(["a\u3000", "\u2028b", "c"], "cache") == ["a", "b", "c"]


# -- StaleCache update / steps / provenance / dtype ----------------------------------------------------------------------
@pytest.mark.parametrize("rows, match", [([-1], r"rows\[0\] is -1, outside"), ([0, 4], r"rows\[1\] is 4, outside"),
                                         (torch.tensor([1.7]), r"rows\[0\] is 1.70*\d*, not an integer"),
                                         ([2, 0, 2], r"row 2 is written twice .*rows\[0\] and rows\[2\]"),
                                         (torch.tensor([True]), "not row indices")])
def test_bad_update_rows_are_refused_and_nothing_is_written(rows, match):
    cache = StaleCache([f"d{i}" for i in range(4)], torch.zeros(4, 2))
    n = len(rows)
    with pytest.raises(ConfigError, match=match):
        cache.update(rows, torch.ones(n, 2), step=5)
    assert cache.matrix().abs().sum() == 0 and (cache.steps != 5).all()


def test_valid_update_rows_still_write():
    cache = StaleCache([f"d{i}" for i in range(4)], torch.zeros(4, 2))
    cache.update(torch.tensor([3, 1]), torch.tensor([[1.0, 1.0], [2.0, 2.0]]), step=5)
    cache.update(torch.tensor([2.0]), torch.tensor([[3.0, 3.0]]), step=6)  # an integral float is a row index
    cache.update([], torch.zeros(0, 2), step=7)
    assert cache.matrix()[:, 0].tolist() == [0.0, 2.0, 3.0, 1.0] and cache.steps.tolist()[1:] == [5, 6, 5]


def test_repeats_gathered_from_processes_are_written_once_the_last_kept():
    from hf_corrector.cache.manager import last_of_repeats

    rows, values = last_of_repeats(torch.tensor([4, 1, 4, 2]), torch.tensor([[0.0], [1.0], [2.0], [3.0]]))
    assert rows.tolist() == [1, 4, 2] and values[:, 0].tolist() == [1.0, 2.0, 3.0]
    same = torch.tensor([3, 1])
    assert last_of_repeats(same, same)[0] is same


@pytest.mark.parametrize("steps, match", [([0, float("nan"), 1], r"steps\[1\] is nan"), ([1, 2], r"shape \(2,\)"),
                                          (np.array([0.0, 1.5, 2.0]), r"steps\[1\] is 1.5"),
                                          ([0, None, 1], "not integers")])
def test_bad_steps_are_refused_at_construction(steps, match):
    with pytest.raises(ConfigError, match=match):
        StaleCache(["a", "b", "c"], torch.zeros(3, 2), steps=steps)


def test_good_steps_round_trip(tmp_path):
    cache = StaleCache(["a", "b", "c"], torch.zeros(3, 2), steps=np.array([0.0, 3.0, -1.0]))
    cache.save(tmp_path / "c")
    assert StaleCache.load(tmp_path / "c").steps.tolist() == [0, 3, -1]


def test_a_provenance_dim_that_disagrees_is_refused():
    with pytest.raises(ConfigError, match=r"provenance\['embedding_dim'\] is 99 but the embeddings have 4 columns"):
        StaleCache(["a"], torch.zeros(1, 4), provenance={"embedding_dim": 99})
    assert StaleCache(["a"], torch.zeros(1, 4), provenance={"embedding_dim": 4}).provenance["embedding_dim"] == 4


def test_complex_embeddings_are_refused():
    with pytest.raises(ConfigError, match="complex.*imaginary part"):
        StaleCache(["a"], np.array([[1 + 2j, 3.0]]))
    with pytest.raises(ConfigError, match="complex"):
        StaleCache(["a"], torch.zeros(1, 2, dtype=torch.complex64))
