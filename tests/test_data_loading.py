"""Loading real and small well-formed data: BEIR (SciFact), Tevatron (both layouts), sentence-transformers pairs."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import datasets
import pytest

from hf_corrector.data import (
    RetrievalData,
    load_beir,
    load_pairs,
    load_retrieval_data,
    load_tevatron,
)
from hf_corrector.data import tevatron as tevatron_module
from hf_corrector.errors import ConfigError, DataFormatError

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"
_skip_without_scifact = pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl").is_file(),
    reason=f"SciFact is not available at {SCIFACT} (expected ../shared/data/scifact next to the repository)",
)


def needs_scifact(test):
    """Mark a test as reading SciFact in place (``-m scifact``), skipped when the folder is absent."""
    return pytest.mark.scifact(_skip_without_scifact(test))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------------ SciFact


@pytest.fixture(scope="module")
def scifact() -> dict[str, tuple[RetrievalData, float]]:
    out = {}
    for split in ("train", "test"):
        start = time.perf_counter()
        data = load_beir(SCIFACT, split=split)
        out[split] = (data, time.perf_counter() - start)
    return out


@needs_scifact
def test_scifact_train_counts(scifact):
    data, _ = scifact["train"]
    assert data.num_docs == 5183
    assert data.num_queries == 809
    assert sum(len(p) for p in data.queries["positive_ids"]) == 919
    assert all(n == [] for n in data.queries["negative_ids"])
    assert len(set(data.queries["query_id"])) == 809
    assert len(set(data.corpus["doc_id"])) == 5183


@needs_scifact
def test_scifact_test_counts(scifact):
    data, _ = scifact["test"]
    assert data.num_docs == 5183
    assert data.num_queries == 300
    assert sum(len(p) for p in data.queries["positive_ids"]) == 339


@needs_scifact
def test_scifact_splits_are_disjoint_and_share_the_corpus(scifact):
    train, test = scifact["train"][0], scifact["test"][0]
    assert not set(train.queries["query_id"]) & set(test.queries["query_id"])
    assert train.corpus["doc_id"] == test.corpus["doc_id"]


@needs_scifact
def test_scifact_texts_match_the_files(scifact):
    data, _ = scifact["train"]
    with open(SCIFACT / "corpus.jsonl", encoding="utf-8") as f:
        first = json.loads(f.readline())
    assert data.corpus[0]["doc_id"] == first["_id"] == "4983"
    assert data.corpus[0]["text"] == f"{first['title'].strip()} {first['text'].strip()}"
    queries = {}
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[q["_id"]] = q["text"]
    q0 = data.queries[0]
    assert q0["query"] == queries[q0["query_id"]].strip()
    # the qrels say query 0 -> doc 31715818 (first judgement line)
    by_id = dict(zip(data.queries["query_id"], data.queries["positive_ids"], strict=True))
    assert by_id["0"] == ["31715818"]
    assert all(isinstance(p, str) for ps in data.queries["positive_ids"] for p in ps)


@needs_scifact
def test_scifact_loads_fast(scifact):
    for split in ("train", "test"):
        _, seconds = scifact[split]
        assert seconds < 5.0, f"SciFact {split} took {seconds:.2f}s"


@needs_scifact
def test_scifact_title_sep():
    data = load_beir(SCIFACT, split="test", title_sep="\n", validate=False)
    assert "\n" in data.corpus[0]["text"]
    assert data.corpus[0]["text"].startswith("Microstructural development of human newborn cerebral white matter")


@needs_scifact
def test_scifact_dispatcher_detects_beir():
    data = load_retrieval_data(str(SCIFACT), split="test")
    assert (data.num_queries, data.num_docs) == (300, 5183)


@needs_scifact
def test_scifact_missing_split_lists_available():
    with pytest.raises(DataFormatError, match=r"dev\.tsv.*available splits: 'test', 'train'"):
        load_beir(SCIFACT, split="dev")


# ------------------------------------------------------------------------------------------- small BEIR folders


def _beir(root: Path, qrels: str, corpus: list[dict] | None = None, queries: list[dict] | None = None) -> Path:
    _write_jsonl(
        root / "corpus.jsonl",
        corpus
        if corpus is not None
        else [
            {"_id": "d1", "title": "Cats", "text": "Cats purr."},
            {"_id": 2, "text": "Dogs bark."},
            {"_id": "d3", "title": "", "text": "  Birds sing.  "},
        ],
    )
    _write_jsonl(
        root / "queries.jsonl",
        queries
        if queries is not None
        else [{"_id": "q1", "text": "what purrs"}, {"_id": 7, "text": "who barks"}, {"_id": "q3", "text": "sing"}],
    )
    (root / "qrels").mkdir(exist_ok=True)
    (root / "qrels" / "train.tsv").write_text(qrels, encoding="utf-8")
    return root


def test_beir_small_folder_ids_titles_and_scores(tmp_path, caplog):
    root = _beir(
        tmp_path,
        "query-id\tcorpus-id\tscore\nq1\td1\t1\n7\t2\t2\nq3\td3\t0\nq1\td3\t-1\n\nq1\td1\t1\n",
    )
    with caplog.at_level(logging.INFO, logger="hf_corrector.data.beir"):
        data = load_beir(root)
    assert data.corpus.to_list() == [
        {"doc_id": "d1", "text": "Cats Cats purr."},
        {"doc_id": "2", "text": "Dogs bark."},
        {"doc_id": "d3", "text": "Birds sing."},
    ]
    assert data.queries.to_list() == [
        {"query_id": "q1", "query": "what purrs", "positive_ids": ["d1"], "negative_ids": []},
        {"query_id": "7", "query": "who barks", "positive_ids": ["2"], "negative_ids": []},
    ]
    text = caplog.text
    assert "ignored 2 judgement(s) with score <= 0" in text
    assert "ignored 1 repeated positive judgement(s)" in text
    assert "dropped 1 query(ies) judged only with score <= 0" in text
    assert "skipped 1 blank line(s)" in text


def test_beir_qrels_without_header_and_space_separated(tmp_path):
    root = _beir(tmp_path, "q1 d1 1\nq3 d3 0.5\n")
    data = load_beir(root)
    assert data.queries["query_id"] == ["q1", "q3"]
    assert data.queries["positive_ids"] == [["d1"], ["d3"]]


def test_beir_crlf_and_bom(tmp_path):
    root = _beir(tmp_path, "query-id\tcorpus-id\tscore\r\nq1\td1\t1\r\n")
    raw = (root / "corpus.jsonl").read_bytes().replace(b"\n", b"\r\n")
    (root / "corpus.jsonl").write_bytes(b"\xef\xbb\xbf" + raw)
    data = load_beir(root)
    assert data.num_docs == 3 and data.queries["positive_ids"] == [["d1"]]


# --------------------------------------------------------------------------------------------- Tevatron layouts


def _passage(docid: str, text: str, title: str = "") -> dict:
    return {"docid": docid, "title": title, "text": text}


TEVATRON_ROWS = [
    {
        "query_id": "100",
        "query": "who wrote hamlet",
        "answers": ["Shakespeare"],
        "positive_passages": [_passage("p1", "Hamlet is a tragedy by Shakespeare.", "Hamlet")],
        "negative_passages": [_passage("p2", "Macbeth is a tragedy.", "Macbeth"), _passage("p3", "Faust is a play.")],
    },
    {
        "query_id": 101,
        "query": " who wrote faust ",
        "answers": ["Goethe"],
        "positive_passages": [_passage("p3", "Faust is a play."), _passage("p4", "Goethe wrote Faust.", "Goethe")],
        "negative_passages": [
            _passage("p1", "Hamlet is a tragedy by Shakespeare.", "Hamlet"),
            _passage("p4", "Goethe wrote Faust.", "Goethe"),
        ],
    },
    {
        "query_id": "102",
        "query": "macbeth",
        "answers": [],
        "positive_passages": [_passage("p2", "Macbeth is a tragedy.", "Macbeth")],
        "negative_passages": [],
    },
]


def _check_tevatron_passage_result(data: RetrievalData) -> None:
    assert data.corpus.to_list() == [
        {"doc_id": "p1", "text": "Hamlet Hamlet is a tragedy by Shakespeare."},
        {"doc_id": "p2", "text": "Macbeth Macbeth is a tragedy."},
        {"doc_id": "p3", "text": "Faust is a play."},
        {"doc_id": "p4", "text": "Goethe Goethe wrote Faust."},
    ]
    assert data.queries.to_list() == [
        {"query_id": "100", "query": "who wrote hamlet", "positive_ids": ["p1"], "negative_ids": ["p2", "p3"]},
        # p4 is both positive and negative for 101: the negative is dropped
        {"query_id": "101", "query": "who wrote faust", "positive_ids": ["p3", "p4"], "negative_ids": ["p1"]},
        {"query_id": "102", "query": "macbeth", "positive_ids": ["p2"], "negative_ids": []},
    ]


def test_tevatron_passage_layout_jsonl(tmp_path, caplog):
    path = _write_jsonl(tmp_path / "train.jsonl", TEVATRON_ROWS)
    with caplog.at_level(logging.INFO, logger="hf_corrector.data.tevatron"):
        data = load_tevatron(path)
    _check_tevatron_passage_result(data)
    assert "dropped 1 negative(s) that are also positives" in caplog.text


def test_tevatron_passage_layout_json_array_and_dataset(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(TEVATRON_ROWS, indent=2), encoding="utf-8")
    _check_tevatron_passage_result(load_tevatron(str(path)))
    rows = [dict(r, query_id=str(r["query_id"])) for r in TEVATRON_ROWS]
    _check_tevatron_passage_result(load_tevatron(datasets.Dataset.from_list(rows)))
    _check_tevatron_passage_result(load_tevatron(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})))


def test_tevatron_folder_picks_the_split(tmp_path):
    _write_jsonl(tmp_path / "train.jsonl", TEVATRON_ROWS)
    _write_jsonl(tmp_path / "dev.jsonl", TEVATRON_ROWS[2:])
    assert load_tevatron(tmp_path).num_queries == 3
    dev = load_tevatron(tmp_path, split="dev")
    assert dev.num_queries == 1 and dev.num_docs == 1
    with pytest.raises(DataFormatError, match="no data file for split 'test'"):
        load_tevatron(tmp_path, split="test")


def test_tevatron_save_to_disk_folder(tmp_path):
    rows = [dict(r, query_id=str(r["query_id"])) for r in TEVATRON_ROWS]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "saved"))
    _check_tevatron_passage_result(load_tevatron(tmp_path / "saved"))


def test_tevatron_dispatcher_detects_the_format(tmp_path):
    path = _write_jsonl(tmp_path / "train.jsonl", TEVATRON_ROWS)
    _check_tevatron_passage_result(load_retrieval_data(path))


ID_ROWS = [
    {
        "query_id": "q1",
        "query_text": "who wrote hamlet",
        "positive_document_ids": ["d1"],
        "negative_document_ids": ["d2", "d3"],
    },
    {"query_id": "q2", "query_text": "faust", "positive_document_ids": ["d3", 4], "negative_document_ids": []},
]
ID_CORPUS = [
    {"docid": "d1", "title": "Hamlet", "text": "A tragedy by Shakespeare."},
    {"docid": "d2", "title": "", "text": "Macbeth is a tragedy."},
    {"docid": "d3", "text": "Faust is a play."},
    {"docid": "4", "title": "Goethe", "text": "He wrote Faust."},
    {"docid": "d5", "title": "Unused", "text": "Stays in the corpus."},
]


def _check_id_result(data: RetrievalData) -> None:
    assert data.corpus.to_list() == [
        {"doc_id": "d1", "text": "Hamlet A tragedy by Shakespeare."},
        {"doc_id": "d2", "text": "Macbeth is a tragedy."},
        {"doc_id": "d3", "text": "Faust is a play."},
        {"doc_id": "4", "text": "Goethe He wrote Faust."},
        {"doc_id": "d5", "text": "Unused Stays in the corpus."},
    ]
    assert data.queries.to_list() == [
        {"query_id": "q1", "query": "who wrote hamlet", "positive_ids": ["d1"], "negative_ids": ["d2", "d3"]},
        {"query_id": "q2", "query": "faust", "positive_ids": ["d3", "4"], "negative_ids": []},
    ]


def test_tevatron_id_layout_files(tmp_path):
    rows = _write_jsonl(tmp_path / "rows.jsonl", ID_ROWS)
    corpus = _write_jsonl(tmp_path / "corpus.jsonl", ID_CORPUS)
    _check_id_result(load_tevatron(rows, corpus=corpus))
    _check_id_result(load_retrieval_data(rows, corpus=str(corpus)))


def test_tevatron_id_layout_datasets_with_query_column(tmp_path):
    rows = [
        {
            "query_id": r["query_id"],
            "query": r["query_text"],
            "positive_document_ids": [str(d) for d in r["positive_document_ids"]],
            "negative_document_ids": r["negative_document_ids"],
        }
        for r in ID_ROWS
    ]
    corpus = datasets.Dataset.from_list([dict({"title": ""}, **c) for c in ID_CORPUS])
    _check_id_result(load_tevatron(datasets.Dataset.from_list(rows), corpus=corpus))


def test_tevatron_id_layout_needs_a_corpus(tmp_path):
    rows = _write_jsonl(tmp_path / "rows.jsonl", ID_ROWS)
    with pytest.raises(ConfigError, match="corpus="):
        load_tevatron(rows)


def test_tevatron_hub_id_goes_through_load_dataset(monkeypatch):
    calls = []
    rows = [dict(r, query_id=str(r["query_id"])) for r in TEVATRON_ROWS]

    def fake_load_dataset(repo, split=None, **kwargs):
        calls.append((repo, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(tevatron_module.datasets, "load_dataset", fake_load_dataset)
    data = load_tevatron("Tevatron/wikipedia-nq", split="train")
    _check_tevatron_passage_result(data)
    assert calls == [("Tevatron/wikipedia-nq", "train")]
    assert data.name == "Tevatron/wikipedia-nq['train']"


def test_tevatron_hub_id_layout_loads_the_corpus_repo(monkeypatch):
    calls = []

    def fake_load_dataset(repo, split=None, **kwargs):
        calls.append((repo, split))
        if repo.endswith("-corpus"):
            return datasets.Dataset.from_list([dict({"title": ""}, **c) for c in ID_CORPUS])
        return datasets.Dataset.from_list(
            [dict(r, positive_document_ids=[str(d) for d in r["positive_document_ids"]]) for r in ID_ROWS]
        )

    monkeypatch.setattr(tevatron_module.datasets, "load_dataset", fake_load_dataset)
    _check_id_result(load_retrieval_data("Tevatron/msmarco-passage", corpus="Tevatron/msmarco-passage-corpus"))
    assert calls == [("Tevatron/msmarco-passage", "train"), ("Tevatron/msmarco-passage-corpus", "train")]


def test_hub_failure_is_a_data_format_error(monkeypatch):
    def failing(repo, split=None, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(tevatron_module.datasets, "load_dataset", failing)
    with pytest.raises(DataFormatError, match=r"Tevatron/nope.*ConnectionError: offline"):
        load_tevatron("Tevatron/nope")


# ----------------------------------------------------------------------------------- sentence-transformers pairs


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def test_pairs_positional_columns_and_merging():
    ds = datasets.Dataset.from_dict(
        {
            "question": ["what is a cat", "why is the sky blue", "what is a cat"],
            "answer": ["A cat is a small animal.", "Rayleigh scattering.", "Cats purr."],
        }
    )
    data = load_pairs(ds)
    assert data.num_queries == 2
    assert data.num_docs == 3
    assert data.queries.to_list() == [
        {
            "query_id": _sha("what is a cat"),
            "query": "what is a cat",
            "positive_ids": [_sha("A cat is a small animal."), _sha("Cats purr.")],
            "negative_ids": [],
        },
        {
            "query_id": _sha("why is the sky blue"),
            "query": "why is the sky blue",
            "positive_ids": [_sha("Rayleigh scattering.")],
            "negative_ids": [],
        },
    ]
    assert dict(zip(data.corpus["doc_id"], data.corpus["text"], strict=True))[_sha("Cats purr.")] == "Cats purr."


def test_pairs_named_negative_columns_and_label_one(caplog):
    rows = {
        "label": [1, 1],
        "negative_2": ["n2", None],
        "positive": ["p1", "p2"],
        "negative_1": ["n1", "p2"],
        "anchor": ["a1", "a2"],
    }
    with caplog.at_level(logging.INFO, logger="hf_corrector.data.sentence_transformers_format"):
        data = load_pairs(rows)
    assert data.queries["query_id"] == [_sha("a1"), _sha("a2")]
    assert data.queries["positive_ids"] == [[_sha("p1")], [_sha("p2")]]
    # negative_1 before negative_2; a2's negative equal to its positive is dropped, its None negative skipped
    assert data.queries["negative_ids"] == [[_sha("n1"), _sha("n2")], []]
    assert sorted(data.corpus["text"]) == ["n1", "n2", "p1", "p2"]
    assert "ignoring non-text column" not in caplog.text  # the label is read: 1 = the text is a positive
    assert "skipped 1 missing or empty negative value(s)" in caplog.text
    assert "dropped 1 negative(s) equal to a positive" in caplog.text


def test_pairs_explicit_columns_and_dispatch(tmp_path):
    rows = [{"x": "n", "q": "query one", "d": "doc one"}, {"x": "m", "q": "query two", "d": "doc two"}]
    data = load_pairs(rows, anchor_column="q", positive_column="d", negative_columns=["x"])
    assert data.queries["query"] == ["query one", "query two"]
    assert data.queries["negative_ids"] == [[_sha("n")], [_sha("m")]]
    path = _write_jsonl(tmp_path / "pairs.jsonl", [{"anchor": r["q"], "positive": r["d"]} for r in rows])
    auto = load_retrieval_data(path)
    assert auto.corpus["text"] == ["doc one", "doc two"]
    positional = load_retrieval_data(rows, format="sentence-transformers")  # x=anchor, q=positive, d=negative
    assert positional.queries["query"] == ["n", "m"]
    assert positional.num_docs == 4


def test_pairs_triplets_from_parquet(tmp_path):
    ds = datasets.Dataset.from_dict({"anchor": ["a", "b"], "positive": ["p", "q"], "negative": ["q", "p"]})
    ds.to_parquet(str(tmp_path / "train-00000-of-00001.parquet"))
    data = load_retrieval_data(tmp_path)
    assert data.queries["positive_ids"] == [[_sha("p")], [_sha("q")]]
    assert data.queries["negative_ids"] == [[_sha("q")], [_sha("p")]]
    assert data.num_docs == 2


def test_pairs_list_of_negatives_column():
    ds = datasets.Dataset.from_dict(
        {"query": ["a", "b"], "positive": ["p", "q"], "negatives": [["n1", "n2", "p"], ["n2", ""]]}
    )
    data = load_pairs(ds)
    # "p" is a positive of "a" (dropped as its negative), "" is skipped
    assert data.queries["negative_ids"] == [[_sha("n1"), _sha("n2")], [_sha("n2")]]
    assert data.num_docs == 4


def test_retrieval_data_passes_through():
    data = load_pairs({"anchor": ["a"], "positive": ["b"]})
    assert load_retrieval_data(data) is data
