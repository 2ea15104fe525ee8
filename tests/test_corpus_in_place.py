"""The corpus is read in place (issue 21): no Python list of N ids or texts, nor an {id: row} dict, in any process;
and stale evaluation searches the cache in its storage dtype (no float32 copy of the corpus)."""

import tracemalloc

import datasets
import pytest
import torch

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
from hf_corrector.cache.manager import CacheManager
from hf_corrector.errors import CacheMismatchError
from hf_corrector.training.inputs import index_inputs
from hf_corrector.utils.arrow_column import ArrowColumn, RowIndex
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever


def test_column_follows_the_dataset_row_order_and_keeps_the_value_type():
    ds = datasets.Dataset.from_dict({"doc_id": [10, 11, 12, 13], "text": ["a", "b", "c", "d"]})
    shuffled = ds.select([3, 1, 0, 2])  # an indices mapping over the same table
    col = ArrowColumn.from_dataset(shuffled, "doc_id")
    assert list(col) == [13, 11, 10, 12] and col[0] == 13 and col[-1] == 12
    assert col[1:3] == [11, 10] and col[::2] == [13, 10] and col.take([2, 2, 0]) == [10, 10, 13]
    assert col == [13, 11, 10, 12] and col != [13, 11, 10]
    assert list(col + [99]) == [13, 11, 10, 12, 99]
    with pytest.raises(IndexError, match="row 4 of a column of 4"):
        col[4]


def test_row_index_is_exact_under_hash_collisions_and_finds_duplicates():
    # in CPython hash(-1) == hash(-2): one hash, two rows, each must resolve to its own
    col = ArrowColumn.of([5, -1, 7, -2])
    index = RowIndex(col)
    assert hash(-1) == hash(-2)
    assert (index[-1], index[-2], index[5], index[7]) == (1, 3, 0, 2)
    assert -3 not in index and index.get(-3) is None and index.get([1]) is None
    with pytest.raises(KeyError):
        index[8]
    assert index.duplicate() is None
    assert RowIndex(ArrowColumn.of([-1, -2, 4, -2])).duplicate() == -2
    strings = RowIndex(ArrowColumn.of([f"d{i}" for i in range(1000)]))
    assert all(strings[f"d{i}"] == i for i in range(0, 1000, 37)) and "d1000" not in strings


def test_duplicate_doc_ids_are_refused_naming_the_id_and_its_rows():
    train, _ = tiny_data(num_docs=30)
    rows = train.corpus.to_list()
    rows[17]["doc_id"] = rows[4]["doc_id"]
    with pytest.raises(CacheMismatchError, match=rf"duplicate doc ids.*{rows[4]['doc_id']!r} is in rows \[4, 17\]"):
        index_inputs(train.queries, None, corpus=datasets.Dataset.from_list(rows))


def test_indexing_the_inputs_and_the_cache_manager_hold_no_python_object_per_row():
    n = 20000
    corpus = datasets.Dataset.from_dict({"doc_id": [f"doc-{i:06d}" for i in range(n)],
                                         "text": [f"text number {i} of the corpus" for i in range(n)]})
    queries = datasets.Dataset.from_dict({"query_id": ["q0", "q1"], "query": ["a", "b"],
                                          "positive_ids": [["doc-000003"], ["doc-019999"]]})
    tracemalloc.start()
    inputs = index_inputs(queries, None, corpus=corpus)
    manager = CacheManager(lambda: None, ArrowColumn.from_dataset(corpus, "text"), encode_targets=None)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # a list of ids + an {id: row} dict + a list of texts came to about 270 bytes a row; the index is 16
    assert held / n < 40, f"{held / n:.0f} bytes a row of Python objects"
    assert inputs.train_examples["positive_row"] == [3, 19999]
    assert manager.texts_of(torch.tensor([19999, 0])) == ["text number 19999 of the corpus", "text number 0 of the corpus"]


def test_stale_evaluation_searches_the_float16_cache_without_a_float32_copy(tmp_path):
    train, test = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 1, "cache_dtype": "float16",
                                                               "eval_corpus_embeddings": "stale"})
    trainer = CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train, eval_dataset=test)
    stored = trainer.corpus_embeddings("stale", as_stored=True)
    assert stored.dtype == torch.float16 and trainer.corpus_embeddings("stale").dtype == torch.float32
    searched = []
    import hf_corrector.evaluation.metrics as metrics

    original = metrics.exact_search
    metrics.exact_search = lambda q, corpus, k, **kw: (searched.append(corpus.dtype), original(q, corpus, k, **kw))[1]
    try:
        got = trainer.evaluate()
    finally:
        metrics.exact_search = original
    assert searched == [torch.float16]
    q = trainer.encode_queries(test.queries["query"])
    from hf_corrector.evaluation.evaluator import RetrievalEvaluator

    as_float = RetrievalEvaluator(test.queries, trainer.doc_ids)(q, {"stale": stored.float()}, prefix="eval")
    assert {k: got[k] for k in as_float} == as_float and as_float["eval_stale_recall@100"] > 0
