"""Ids: one normalisation for corpus ids, query ids and qrels (every loader), and ids that cannot be stored refused at
load with the row named (issue 23)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_corrector.data import load_beir
from hf_corrector.data.format import RetrievalData, normalize_id
from hf_corrector.errors import DataFormatError


def _beir(tmp_path: Path, doc_ids, qrels_doc="d1", query_id="q1") -> Path:
    folder = tmp_path / "beir"
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for i, d in enumerate(doc_ids):
            fh.write(json.dumps({"_id": d, "title": "", "text": f"text {i}"}) + "\n")
    (folder / "queries.jsonl").write_text(json.dumps({"_id": query_id, "text": "a query"}) + "\n")
    (folder / "qrels" / "test.tsv").write_text(f"query-id\tcorpus-id\tscore\nq1\t{qrels_doc}\t1\n")
    return folder


def test_corpus_ids_are_normalised_as_qrels_ids_are(tmp_path):
    data = load_beir(_beir(tmp_path, [" d1 ", "d2"], query_id=" q1"), split="test")
    assert list(data.corpus["doc_id"]) == ["d1", "d2"]
    assert list(data.queries["query_id"]) == ["q1"] and list(data.queries["positive_ids"]) == [["d1"]]


@pytest.mark.parametrize("bad", ["d\t1", "d\n1", "d\x001", "d\ud8001"], ids=["tab", "newline", "nul", "surrogate"])
def test_unstorable_corpus_ids_are_refused_naming_the_line(tmp_path, bad):
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: .*(cannot store|surrogate)"):
        load_beir(_beir(tmp_path, ["d1", bad]), split="test")


def test_from_records_normalises_and_refuses_like_the_loaders():
    corpus = [{"doc_id": 1, "text": "one"}, {"doc_id": " 2 ", "text": "two"}]
    data = RetrievalData.from_records([{"query_id": 7, "query": "q", "positive_ids": [1, "2"]}], corpus)
    assert list(data.corpus["doc_id"]) == ["1", "2"] and list(data.queries["positive_ids"]) == [["1", "2"]]
    with pytest.raises(DataFormatError, match=r"query row 0: query_id must be a string or an integer, got NoneType"):
        RetrievalData.from_records([{"query_id": None, "query": "q", "positive_ids": [1]}], corpus)
    with pytest.raises(DataFormatError, match=r"corpus row 1: doc_id .*float"):
        RetrievalData.from_records([{"query_id": 1, "query": "q", "positive_ids": [1]}],
                                   [{"doc_id": 1, "text": "a"}, {"doc_id": 2.0, "text": "b"}])
    with pytest.raises(DataFormatError, match=r"query row 0: positive id 'd\\n1'"):
        RetrievalData.from_records([{"query_id": 1, "query": "q", "positive_ids": ["d\n1"]}], corpus)
    assert normalize_id(" x ", "here") == "x"
