"""Query tables written as users write them (issue 23, third round): a single id where a list belongs, one row per
(query, positive) as qrels files are laid out, evaluation queries without positives, integer ids, and a softmax of
one. Each was silently wrong: ids read character by character, known positives mined as negatives, qrels replaced,
metrics lowered, or a run that trains nothing."""
from __future__ import annotations


import datasets
import pytest

from hf_corrector import ConfigError, CorrectorTrainer, CorrectorTrainingArguments, RetrievalData
from hf_corrector.errors import DataFormatError
from hf_corrector.evaluation.metrics import evaluate_run

from .log_capture import warnings_of as _warnings_of
from .tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever


@pytest.fixture(scope="module")
def data():
    return tiny_data(num_docs=40, num_queries=16)


def _trainer(tmp_path, train_dataset, corpus, eval_dataset=None, **overrides):
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "max_steps": 1,
                                                                 "num_negatives": 2, **overrides})
    return CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train_dataset, corpus=corpus,
                            eval_dataset=eval_dataset)




def _rows(train: RetrievalData) -> list[dict]:
    return [dict(row) for row in train.queries]


def test_a_single_positive_id_string_is_refused_not_split_into_characters(tmp_path, data):
    """positive_ids="d14" was iterated as "d", "1", "4" (an id "14" became the positives "1" and "4")."""
    train, _ = data
    rows = [{**row, "positive_ids": row["positive_ids"][0]} for row in _rows(train)]
    with pytest.raises(ConfigError, match=r"'positive_ids' holds .*not lists of doc ids.*dataset.map"):
        _trainer(tmp_path, datasets.Dataset.from_list(rows), train.corpus)
    with pytest.raises(ConfigError, match=r"eval_dataset: the column 'positive_ids'"):
        _trainer(tmp_path, train.queries, train.corpus, eval_dataset=datasets.Dataset.from_list(rows))
    records = [{"query_id": "q", "query": "cell gene", "positive_ids": "12"}]
    corpus = [{"doc_id": str(i), "text": "cell"} for i in range(13)]
    with pytest.raises(DataFormatError, match=r"query row 0: positive_ids must be a list of ids, got str '12'"):
        RetrievalData.from_records(records, corpus)
    with pytest.raises(DataFormatError, match=r"negative_ids must be a list of ids, got int 3"):
        RetrievalData.from_records([{**records[0], "positive_ids": ["12"], "negative_ids": 3}], corpus)


def test_one_row_per_query_and_positive_is_refused_naming_the_rows(tmp_path, data):
    """The qrels layout (a row per (query, positive)) mined the other row's positive as a negative in training and
    kept only the last row's qrels in evaluation."""
    train, _ = data
    rows = _rows(train)
    split = rows + [{**rows[0], "positive_ids": ["d1"]}]
    with pytest.raises(ConfigError, match=r"train_dataset: query_id 'q0' appears in rows 0 and 12.*merge the rows"):
        _trainer(tmp_path, datasets.Dataset.from_list(split), train.corpus)
    with pytest.raises(ConfigError, match=r"eval_dataset\['dev'\]: query_id 'q0' appears in rows 0 and 12"):
        _trainer(tmp_path, train.queries, train.corpus, eval_dataset={"dev": datasets.Dataset.from_list(split)})


def test_queries_without_positives_are_left_out_of_the_mean():
    """A query with no relevant document counted as a zero in every metric (0.5 here instead of 1.0); trec_eval
    and BEIR leave such queries out. Queries with positives but nothing retrieved still count as zeros."""
    run = {"a": {"d1": 2.0, "d2": 1.0}, "b": {"d2": 1.0}, "c": {}}
    got = evaluate_run(run, {"a": {"d1": 1}, "b": {}}, metrics=("ndcg@10", "recall@10", "mrr@10"))
    assert got == {"ndcg@10": 1.0, "recall@10": 1.0, "mrr@10": 1.0}
    got = evaluate_run(run, {"a": {"d1": 1}, "b": {}, "c": {"d1": 1}}, metrics=("recall@10",))
    assert got == {"recall@10": 0.5}


def test_integer_ids_evaluate_as_their_decimal_text():
    """Integer query / doc ids trained, then evaluation crashed inside pytrec_eval ('Expected string as key')."""
    run = {0: {7: 2.0, 8: 1.0}, 1: {8: 3.0, 7: 1.0}}
    got = evaluate_run(run, {0: {7: 1}, 1: {7: 1}}, metrics=("mrr@10", "recall@1"))
    assert got == {"mrr@10": pytest.approx(0.75), "recall@1": 0.5}


def test_evaluation_with_integer_ids_and_an_unjudged_query_end_to_end(tmp_path):
    """The trainer's evaluate() on a corpus and queries with integer ids, one evaluation query without positives:
    the metrics equal those of the same data with string ids and without that query."""
    train, test = tiny_data(num_docs=40, num_queries=16)

    def as_int(rows, *keys):
        return [{**row, **{k: (int(row[k][1:]) if isinstance(row[k], str) else [int(v[1:]) for v in row[k]])
                           for k in keys}} for row in rows]

    corpus = datasets.Dataset.from_list(as_int([dict(r) for r in train.corpus], "doc_id"))
    keep = ("query_id", "query", "positive_ids")
    queries = datasets.Dataset.from_list(as_int([{k: r[k] for k in keep} for r in train.queries], "query_id",
                                                "positive_ids"))
    held = as_int([{k: r[k] for k in keep} for r in test.queries], "query_id", "positive_ids")
    unjudged = datasets.Dataset.from_list(held + [{"query_id": 999, "query": "cell gene", "positive_ids": []}])
    trainer = _trainer(tmp_path, queries, corpus)
    with _warnings_of("hf_corrector.evaluation.evaluator") as found:
        with_extra = trainer.evaluate(unjudged)
    assert any("1 of 5 evaluation queries have no positive_ids (e.g. 999)" in m for m in found), found
    plain = trainer.evaluate(datasets.Dataset.from_list(held))
    assert with_extra["eval_ndcg@10"] == plain["eval_ndcg@10"] > 0


def test_a_softmax_of_one_is_refused(tmp_path, data):
    """per_device_train_batch_size=1 with num_negatives=0: loss 0 at every step, nothing trained, no message."""
    train, _ = data
    with pytest.raises(ConfigError, match=r"num_negatives=0 with per_device_train_batch_size=1.*nothing trains"):
        _trainer(tmp_path, train.queries, train.corpus, per_device_train_batch_size=1, num_negatives=0)
    _trainer(tmp_path, train.queries, train.corpus, per_device_train_batch_size=2, num_negatives=0)  # still fine


def test_a_corpus_title_column_is_named_in_a_warning(tmp_path, data):
    """A BEIR corpus read with datasets (doc_id / title / text) trained on the texts alone, without a word, where
    load_beir joins title and text."""
    train, _ = data
    corpus = train.corpus.add_column("title", ["heart study"] * len(train.corpus))
    with _warnings_of("hf_corrector.training.inputs") as found:
        _trainer(tmp_path, train.queries, corpus)
    assert any("the corpus has a 'title' column: the trainer encodes its 'text' column only" in m for m in found)


def test_a_streamed_or_split_corpus_is_refused_naming_what_to_pass(tmp_path, data):
    """An IterableDataset corpus crashed with "object of type 'IterableDataset' has no len()"."""
    train, _ = data
    with pytest.raises(ConfigError, match=r"got IterableDataset: an IterableDataset has no rows.*streaming=True"):
        _trainer(tmp_path, train.queries, train.corpus.to_iterable_dataset())
    with pytest.raises(ConfigError, match=r"got DatasetDict: pass one split"):
        _trainer(tmp_path, train.queries, datasets.DatasetDict({"corpus": train.corpus}))


def test_resuming_from_a_saved_model_says_it_is_a_model_not_a_torn_checkpoint(tmp_path):
    """resume_from_checkpoint=<a save_model folder> said "the save did not finish"; it names what to pass instead."""
    from hf_corrector.errors import CacheCorruptError
    from hf_corrector.training.checkpoints import verify_checkpoint

    folder = tmp_path / "final"
    tiny_retriever(tmp_path).save_pretrained(folder)
    with pytest.raises(CacheCorruptError, match=r"it holds a model .*not a checkpoint.*model='.*final'.*without "
                                                r"resume_from_checkpoint"):
        verify_checkpoint(folder)


@pytest.mark.parametrize("value", [True, "all", "non_padding"])
def test_counting_input_tokens_is_refused(tmp_path, value):
    """include_num_input_tokens_seen counted 0 tokens all run (Trainer looks for input_ids), with transformers'
    advice to add main_input_name to a class the user does not own."""
    with pytest.raises(ConfigError, match=r"include_num_input_tokens_seen=.*would stay 0"):
        CorrectorTrainingArguments(str(tmp_path / "out"), include_num_input_tokens_seen=value)
    CorrectorTrainingArguments(str(tmp_path / "out"), include_num_input_tokens_seen=False)
