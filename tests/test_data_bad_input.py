"""Every bad input raises the library's error type, naming the file and line (or the row / id), from our code."""

from __future__ import annotations

import json
import re
import traceback
from pathlib import Path

import datasets
import pytest

from hf_corrector.data import load_beir, load_pairs, load_retrieval_data, load_tevatron
from hf_corrector.errors import ConfigError, DataFormatError, HFCorrectorError

CORPUS = [
    {"_id": "d1", "title": "Cats", "text": "Cats purr."},
    {"_id": "d2", "title": "Dogs", "text": "Dogs bark."},
    {"_id": "d3", "text": "Birds sing."},
]
QUERIES = [{"_id": "q1", "text": "what purrs"}, {"_id": "q2", "text": "who barks"}]
QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n"


def _lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")


def make_beir(
    root: Path, corpus: bytes | None = None, queries: bytes | None = None, qrels: bytes | None = None
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_bytes(_lines(CORPUS) if corpus is None else corpus)
    (root / "queries.jsonl").write_bytes(_lines(QUERIES) if queries is None else queries)
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "train.tsv").write_bytes(QRELS.encode() if qrels is None else qrels)
    return root


def raised_by(excinfo: pytest.ExceptionInfo, exc_type: type[BaseException] = DataFormatError) -> str:
    """The error is ours, raised from hf_corrector code (no traceback from deep inside a library)."""
    assert isinstance(excinfo.value, HFCorrectorError)
    assert excinfo.type is exc_type or issubclass(excinfo.type, exc_type)
    last = traceback.extract_tb(excinfo.tb)[-1].filename
    assert f"{Path('hf_corrector')}" in last, f"raised from {last}"
    assert excinfo.value.__cause__ is None or isinstance(excinfo.value.__cause__, Exception)
    return str(excinfo.value)


def test_sanity_valid_folder_loads(tmp_path):
    data = load_beir(make_beir(tmp_path))
    assert (data.num_queries, data.num_docs) == (2, 3)


# ----------------------------------------------------------------------------------------------- JSON lines


def test_malformed_json_line_in_corpus(tmp_path):
    bad = _lines(CORPUS[:2]) + b'{"_id": "d3", "text": "Birds \n'
    root = make_beir(tmp_path, corpus=bad)
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'corpus.jsonl'}:3: not valid JSON" in msg
    assert ei.value.__suppress_context__


def test_malformed_json_line_in_queries(tmp_path):
    root = make_beir(tmp_path, queries=_lines(QUERIES[:1]) + b"{'_id': 'q2', 'text': 'single quotes'}\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'queries.jsonl'}:2: not valid JSON" in raised_by(ei)


def test_truncated_last_line(tmp_path):
    root = make_beir(tmp_path, corpus=_lines(CORPUS)[:-10])
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}:3:" in raised_by(ei)


@pytest.mark.parametrize(
    "line,kind", [(b"[1, 2]", "an array"), (b'"text"', "a string"), (b"3", "a number"), (b"null", "null")]
)
def test_non_object_line(tmp_path, line, kind):
    root = make_beir(tmp_path, corpus=_lines(CORPUS[:1]) + line + b"\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}:2: expected a JSON object, got {kind}" in raised_by(ei)


@pytest.mark.parametrize(
    "which,rows,line,field",
    [
        ("corpus", [CORPUS[0], {"title": "x", "text": "no id"}], 2, "_id"),
        ("corpus", [CORPUS[0], CORPUS[1], {"_id": "d3", "title": "only a title"}], 3, "text"),
        ("queries", [{"text": "no id"}], 1, "_id"),
        ("queries", [QUERIES[0], {"_id": "q2"}], 2, "text"),
    ],
)
def test_missing_field(tmp_path, which, rows, line, field):
    root = make_beir(tmp_path, **{which: _lines(rows)})
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / (which + '.jsonl')}:{line}: missing field {field!r}" in raised_by(ei)


@pytest.mark.parametrize(
    "row,message",
    [
        ({"_id": 1.5, "text": "x"}, "field '_id' must be a string or an integer, got a number"),
        ({"_id": ["d"], "text": "x"}, "field '_id' must be a string or an integer, got an array"),
        ({"_id": True, "text": "x"}, "got a boolean"),
        ({"_id": "d9", "text": 5}, "field 'text' must be a string, got a number"),
        ({"_id": "d9", "text": None}, "field 'text' is null"),
        ({"_id": "d9", "title": {"a": 1}, "text": "x"}, "field 'title' must be a string, got dict"),
        ({"_id": " ", "text": "x"}, "field '_id' is empty"),
    ],
)
def test_wrong_field_types(tmp_path, row, message):
    root = make_beir(tmp_path, corpus=_lines(CORPUS + [row]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'corpus.jsonl'}:4: " in msg and message in msg


def test_non_utf8_bytes(tmp_path):
    bad = _lines(CORPUS[:1]) + b'{"_id": "d2", "text": "caf\xe9"}\n' + _lines(CORPUS[2:])
    root = make_beir(tmp_path, corpus=bad)
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'corpus.jsonl'}:2: not valid UTF-8" in msg
    assert ei.value.__suppress_context__


def test_non_utf8_bytes_in_qrels(tmp_path):
    root = make_beir(tmp_path, qrels=QRELS.encode() + b"q1\td\xff\t1\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels' / 'train.tsv'}:4: not valid UTF-8" in raised_by(ei)


def test_lone_surrogate_escape(tmp_path):
    root = make_beir(tmp_path, queries=_lines(QUERIES) + b'{"_id": "q3", "text": "bad \\ud800 text"}\n')
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'queries.jsonl'}:3: a string holds an unpaired UTF-16 surrogate" in raised_by(ei)


def test_duplicate_doc_id(tmp_path):
    root = make_beir(tmp_path, corpus=_lines(CORPUS + [{"_id": "d2", "text": "again"}]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}:4: duplicate doc id 'd2' (first on line 2)" in raised_by(ei)


def test_duplicate_doc_id_int_and_str(tmp_path):
    root = make_beir(tmp_path, corpus=_lines(CORPUS + [{"_id": 7, "text": "a"}, {"_id": "7", "text": "b"}]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}:5: duplicate doc id '7' (first on line 4)" in raised_by(ei)


def test_duplicate_query_id(tmp_path):
    root = make_beir(tmp_path, queries=_lines(QUERIES + [{"_id": "q1", "text": "again"}]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'queries.jsonl'}:3: duplicate query id 'q1' (first on line 1)" in raised_by(ei)


def test_empty_doc_text(tmp_path):
    root = make_beir(tmp_path, corpus=_lines(CORPUS + [{"_id": "d4", "title": " ", "text": " \t "}]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}:4: empty text (and title) for doc id 'd4'" in raised_by(ei)


def test_empty_query_text(tmp_path):
    root = make_beir(tmp_path, queries=_lines(QUERIES + [{"_id": "q3", "text": ""}]))
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'queries.jsonl'}:3: empty text for query id 'q3'" in raised_by(ei)


# ----------------------------------------------------------------------------------------------------- qrels


def test_qrels_unknown_query_id(tmp_path):
    root = make_beir(tmp_path, qrels=(QRELS + "q9\td1\t1\n").encode())
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'qrels' / 'train.tsv'}:4: query id 'q9' is not in {root / 'queries.jsonl'}" in msg


def test_qrels_unknown_doc_id(tmp_path):
    root = make_beir(tmp_path, qrels=(QRELS + "q1\td42\t0\n").encode())
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'qrels' / 'train.tsv'}:4: corpus id 'd42' is not in {root / 'corpus.jsonl'}" in msg


@pytest.mark.parametrize("line,count", [("q1\td1", 2), ("q1\td1\t1\textra", 4), ("q1", 1)])
def test_qrels_wrong_number_of_columns(tmp_path, line, count):
    root = make_beir(tmp_path, qrels=(QRELS + line + "\n").encode())
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels' / 'train.tsv'}:4: expected 3 tab-separated columns" in raised_by(ei)
    assert f"got {count}" in str(ei.value)


@pytest.mark.parametrize(
    "score,why",
    [
        ("high", "is not a number"),
        ("nan", "is not a finite number"),
        ("inf", "is not a finite number"),
        ("", "is not a number"),
    ],
)
def test_qrels_bad_score(tmp_path, score, why):
    root = make_beir(tmp_path, qrels=f"query-id\tcorpus-id\tscore\nq1\td1\t{score}\n".encode())
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels' / 'train.tsv'}:2: score {score!r} {why}" in raised_by(ei)


def test_qrels_empty_id(tmp_path):
    root = make_beir(tmp_path, qrels=b"query-id\tcorpus-id\tscore\n\td1\t1\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels' / 'train.tsv'}:2: empty query id" in raised_by(ei)


def test_qrels_only_non_positive_scores_is_an_empty_query_set(tmp_path):
    root = make_beir(tmp_path, qrels=b"query-id\tcorpus-id\tscore\nq1\td1\t0\nq2\td2\t-1\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    msg = raised_by(ei)
    assert f"{root / 'qrels' / 'train.tsv'}: the query set is empty" in msg and "among 2 judgement line(s)" in msg


# ------------------------------------------------------------------------------------------- missing / empty


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError) as ei:
        load_beir(tmp_path / "nope")
    assert f"{tmp_path / 'nope'}: no such BEIR folder" in raised_by(ei)


def test_path_is_a_file(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(DataFormatError, match="is not a folder"):
        load_beir(tmp_path / "f.txt")


@pytest.mark.parametrize("name", ["corpus.jsonl", "queries.jsonl"])
def test_missing_file(tmp_path, name):
    root = make_beir(tmp_path)
    (root / name).unlink()
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / name}: missing file" in raised_by(ei)


def test_missing_qrels_folder(tmp_path):
    root = make_beir(tmp_path)
    (root / "qrels" / "train.tsv").unlink()
    (root / "qrels").rmdir()
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels'}: missing folder" in raised_by(ei)


def test_missing_split_lists_available_splits(tmp_path):
    root = make_beir(tmp_path)
    (root / "qrels" / "dev.tsv").write_text(QRELS)
    with pytest.raises(DataFormatError) as ei:
        load_beir(root, split="test")
    msg = raised_by(ei)
    assert f"{root / 'qrels' / 'test.tsv'}: missing file: no split 'test'; available splits: 'dev', 'train'" in msg


def test_empty_corpus(tmp_path):
    root = make_beir(tmp_path, corpus=b"\n\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'corpus.jsonl'}: the corpus is empty" in raised_by(ei)


def test_empty_queries(tmp_path):
    root = make_beir(tmp_path, queries=b"")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'queries.jsonl'}: the query set is empty" in raised_by(ei)


def test_empty_qrels(tmp_path):
    root = make_beir(tmp_path, qrels=b"query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataFormatError) as ei:
        load_beir(root)
    assert f"{root / 'qrels' / 'train.tsv'}: the query set is empty" in raised_by(ei)


def test_dispatcher_half_beir_folder_gets_beir_error(tmp_path):
    root = make_beir(tmp_path)
    (root / "queries.jsonl").unlink()
    with pytest.raises(DataFormatError, match=re.escape(f"{root / 'queries.jsonl'}: missing file")):
        load_retrieval_data(root)


# -------------------------------------------------------------------------------------------------- Tevatron


def _row(qid="1", pos=None, neg=None, **extra):
    row = {
        "query_id": qid,
        "query": f"query {qid}",
        "positive_passages": pos if pos is not None else [{"docid": f"p{qid}", "title": "T", "text": f"text {qid}"}],
        "negative_passages": neg if neg is not None else [],
    }
    row.update(extra)
    return row


def test_tevatron_conflicting_texts_names_the_docid():
    rows = [_row("1"), _row("2", neg=[{"docid": "p1", "title": "T", "text": "other text"}])]
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows)
    msg = raised_by(ei)
    assert "rows row 1 (query_id '2') negative_passages[0]: docid 'p1' has a different text" in msg
    assert "than at rows row 0" in msg


def test_tevatron_missing_query_id_names_the_row():
    rows = [_row("1"), {k: v for k, v in _row("2").items() if k != "query_id"}]
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows)
    assert "rows row 1: missing field 'query_id'" in raised_by(ei)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"positive_passages": "p1"}, "(query_id '1'): field 'positive_passages' must be a list, got a string"),
        ({"positive_passages": []}, "(query_id '1'): field 'positive_passages' is empty"),
        ({"positive_passages": None}, "(query_id '1'): field 'positive_passages' is missing or null"),
        ({"positive_passages": [5]}, "positive_passages[0]: a passage must be an object"),
        ({"positive_passages": [{"title": "t", "text": "x"}]}, "positive_passages[0]: missing field 'docid'"),
        (
            {"positive_passages": [{"docid": "a", "title": "t"}]},
            "positive_passages[0] (docid 'a'): missing field 'text'",
        ),
        (
            {"negative_passages": [{"docid": "a", "title": "", "text": " "}]},
            "negative_passages[0] (docid 'a'): empty text",
        ),
        (
            {"negative_passages": [{"docid": "a", "title": 3, "text": "x"}]},
            "(docid 'a'): field 'title' must be a string",
        ),
        ({"negative_passages": {"docid": "a"}}, "field 'negative_passages' must be a list, got dict"),
        ({"query": None}, "(query_id '1'): field 'query' is missing or null"),
        ({"query": "  "}, "(query_id '1'): field 'query' is empty"),
        ({"query_id": 1.5}, "rows row 0: field 'query_id' must be a string or an integer, got a number"),
    ],
)
def test_tevatron_malformed_fields(change, message):
    with pytest.raises(DataFormatError) as ei:
        load_tevatron([dict(_row("1"), **change)])
    msg = raised_by(ei)
    assert message in msg and "rows row 0" in msg


def test_tevatron_duplicate_query_id():
    rows = [_row("1"), _row("2"), dict(_row("1"), positive_passages=[{"docid": "z", "text": "zz"}])]
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows)
    assert "rows row 2 (query_id '1'): duplicate query id (first at rows row 0)" in raised_by(ei)


def test_tevatron_non_mapping_row():
    with pytest.raises(DataFormatError) as ei:
        load_tevatron([_row("1"), ["not", "a", "row"]])
    assert "rows row 1: expected an object/dict row, got an array" in raised_by(ei)


def test_tevatron_not_tevatron_columns():
    with pytest.raises(DataFormatError, match=r"not Tevatron data.*'positive_passages'"):
        load_tevatron([{"query_id": "1", "query": "q"}])


def test_tevatron_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(json.dumps(_row("1")).encode() + b"\n" + json.dumps(_row("2")).encode()[:-5] + b"\n")
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(path)
    assert f"{path}:2: not valid JSON" in raised_by(ei)


def test_tevatron_bad_field_in_file_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(_row("1")) + "\n" + json.dumps(_row("2", pos=[{"docid": None, "text": "x"}])) + "\n")
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(path)
    assert (
        f"{path}:2 (query_id '2') positive_passages[0]: field 'docid' must be a string or an integer, got null"
        in raised_by(ei)
    )


def test_tevatron_bad_json_array_names_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n  {"query_id": "1"},\n  {"query_id": 2,,}\n]\n')
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(path)
    assert f"{path}:3: not valid JSON" in raised_by(ei)


def test_tevatron_id_layout_unknown_doc_id(tmp_path):
    rows = [{"query_id": "q1", "query": "x", "positive_document_ids": ["d1"], "negative_document_ids": ["d9"]}]
    corpus = [{"docid": "d1", "text": "one"}]
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows, corpus=corpus)
    assert "rows row 0 (query_id 'q1') negative_document_ids[0]: doc id 'd9' is not in the corpus" in raised_by(ei)


def test_tevatron_corpus_conflict_and_missing_fields(tmp_path):
    rows = [{"query_id": "q1", "query": "x", "positive_document_ids": ["d1"], "negative_document_ids": []}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"docid": "d1", "text": "one"}\n{"docid": "d1", "text": "uno"}\n')
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows, corpus=corpus)
    assert f"{corpus}:2: docid 'd1' has a different text than at {corpus}:1" in raised_by(ei)
    corpus.write_text('{"docid": "d1", "text": "one"}\n{"docid": "d2"}\n')
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(rows, corpus=corpus)
    assert f"{corpus}:2 (docid 'd2'): missing field 'text'" in raised_by(ei)


def test_tevatron_missing_split_in_datasetdict():
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([_row("1")])})
    with pytest.raises(DataFormatError, match=r"no split 'dev'; available splits: 'train'"):
        load_tevatron(dd, split="dev")


def test_tevatron_missing_local_file(tmp_path):
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(str(tmp_path / "missing.jsonl"))
    assert f"{tmp_path / 'missing.jsonl'}: no such file or folder" in raised_by(ei)


def test_tevatron_empty_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("")
    with pytest.raises(DataFormatError, match="the query set is empty"):
        load_tevatron(path)


def test_bad_parquet_file(tmp_path):
    path = tmp_path / "train.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataFormatError) as ei:
        load_tevatron(path)
    assert f"{path}: could not read the file" in raised_by(ei)


# ----------------------------------------------------------------------------------- sentence-transformers pairs


@pytest.mark.parametrize(
    "rows,message",
    [
        (
            [{"anchor": "a", "positive": "p"}, {"anchor": None, "positive": "p"}],
            "pairs row 1: column 'anchor' is missing or null",
        ),
        ([{"anchor": "a", "positive": 3}], "pairs row 0: column 'positive' must be a string, got a number"),
        ([{"anchor": "a", "positive": " "}], "pairs row 0: column 'positive' is empty"),
        (
            [{"anchor": "a", "positive": "p", "negative": ["x", ["y"]]}],
            "pairs row 0 column 'negative'[1]: a negative must be a string, got an array",
        ),
        ([{"anchor": "a", "positive": "p"}, {"anchor": "b"}], "pairs row 1: column 'positive' is missing or null"),
        (
            [{"anchor": "a\ud800", "positive": "p"}],
            "pairs row 0 column 'anchor': the text holds an unpaired UTF-16 surrogate",
        ),
    ],
)
def test_pairs_bad_values(rows, message):
    with pytest.raises(DataFormatError) as ei:
        load_pairs(rows)
    assert message in raised_by(ei)


def test_pairs_non_string_dataset_column():
    ds = datasets.Dataset.from_dict({"anchor": ["a"], "positive": [1]})
    with pytest.raises(DataFormatError) as ei:
        load_pairs(ds)
    assert "column 'positive' must hold strings" in raised_by(ei)


def test_pairs_bad_columns():
    with pytest.raises(ConfigError) as ei:
        load_pairs([{"anchor": "a", "positive": "p"}], anchor_column="query")
    assert "column 'query' is not in the data" in raised_by(ei, ConfigError)
    with pytest.raises(ConfigError, match="at least two text columns"):
        load_pairs([{"anchor": "a", "label": 1}])


def test_pairs_no_rows():
    with pytest.raises(DataFormatError, match="no rows"):
        load_pairs([])


def test_dispatcher_unknown_format():
    with pytest.raises(ConfigError, match="unknown data format 'csv'"):
        load_retrieval_data([{"anchor": "a", "positive": "p"}], format="csv")


def test_dispatcher_corpus_with_pairs_is_a_config_error():
    with pytest.raises(ConfigError, match="corpus= is only used"):
        load_retrieval_data([{"anchor": "a", "positive": "p"}], corpus=[{"docid": "1", "text": "x"}])


def test_tevatron_unpaired_surrogate_names_the_query_id():
    with pytest.raises(DataFormatError) as ei:
        load_tevatron([_row("1"), dict(_row("2"), query="bad \ud800 text")])
    assert "query_id '2': column 'query' holds a value that is not valid text" in raised_by(ei)


def test_tevatron_unpaired_surrogate_in_a_passage_names_the_doc_id():
    with pytest.raises(DataFormatError) as ei:
        load_tevatron([_row("1", pos=[{"docid": "p9", "text": "bad \udfff"}])])
    assert "doc_id 'p9': column 'text' holds a value that is not valid text" in raised_by(ei)
