"""Habits of sentence-transformers users (issue 23): a raw sentence-transformers training dataset (pairs, triplets,
``mine_hard_negatives`` output in each of its formats, ``load_dataset("json")`` files) passed as ``train_dataset``
is refused before any work with the loader to call, and that loader reads every format right (a labeled pair's
label-0 passage is a negative, never a positive)."""

from __future__ import annotations

import json

import datasets
import pytest

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.util import mine_hard_negatives  # noqa: E402

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments  # noqa: E402
from hf_corrector.data import load_pairs  # noqa: E402
from hf_corrector.data.sentence_transformers_format import text_id  # noqa: E402
from hf_corrector.errors import ConfigError, DataFormatError  # noqa: E402
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_data, tiny_retriever  # noqa: E402

FORMATS = ["triplet", "n-tuple", "labeled-pair", "labeled-list"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


@pytest.fixture(scope="module")
def pairs_and_model(tmp_path_factory):
    """(anchor, positive) texts of the tiny training data and the tiny retriever as a SentenceTransformer."""
    tmp = tmp_path_factory.mktemp("st")
    train, _ = tiny_data()
    text_of = dict(zip(train.corpus["doc_id"], train.corpus["text"]))
    pairs = datasets.Dataset.from_dict({"anchor": train.queries["query"][:12],
                                        "positive": [text_of[p[0]] for p in train.queries["positive_ids"][:12]]})
    tiny_retriever(tmp).save_pretrained(tmp / "model")
    return pairs, SentenceTransformer(str(tmp / "model"), device="cpu"), train


def _mined(pairs_and_model, output_format, **kw):
    pairs, model, train = pairs_and_model
    return mine_hard_negatives(pairs, model, corpus=list(train.corpus["text"]), num_negatives=3,
                               output_format=output_format, verbose=False, batch_size=32, **kw)


def _trainer(tmp_path, train_dataset, **kw):
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 2})
    return CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train_dataset, **kw)


@pytest.mark.parametrize("output_format", ["pairs", *FORMATS, "json-dict", "json-split"])
@pytest.mark.parametrize("with_corpus", [False, True])
def test_raw_sentence_transformers_data_is_refused_naming_load_pairs(tmp_path, pairs_and_model, output_format,
                                                                     with_corpus):
    pairs, _, train = pairs_and_model
    if output_format.startswith("json"):
        path = tmp_path / "pairs.jsonl"
        path.write_text("\n".join(json.dumps(row) for row in pairs))
        raw = datasets.load_dataset("json", data_files=str(path))
        raw = raw if output_format == "json-dict" else raw["train"]
    else:
        raw = pairs if output_format == "pairs" else _mined(pairs_and_model, output_format)
    with pytest.raises(ConfigError, match="load_pairs") as err:
        _trainer(tmp_path, raw, corpus=train.corpus if with_corpus else None)
    assert "train_dataset" in str(err.value)


@pytest.mark.parametrize("output_format", FORMATS)
def test_load_pairs_reads_every_mined_format_with_the_right_positives(pairs_and_model, output_format):
    pairs, _, _ = pairs_and_model
    data = load_pairs(_mined(pairs_and_model, output_format))
    expected = {text_id(a): {text_id(p)} for a, p in zip(pairs["anchor"], pairs["positive"])}
    got = dict(zip(data.queries["query_id"], data.queries["positive_ids"]))
    assert {q: set(p) for q, p in got.items()} == expected  # labeled-pair: the label-0 passages are not positives
    negatives = dict(zip(data.queries["query_id"], data.queries["negative_ids"]))
    assert all(len(n) >= 1 and not set(n) & expected[q] for q, n in negatives.items())
    assert sum(map(len, negatives.values())) >= 2 * len(expected)  # the mined negatives were read, not dropped


def test_mined_triplets_through_load_pairs_train(tmp_path, pairs_and_model):
    trainer = _trainer(tmp_path, load_pairs(_mined(pairs_and_model, "triplet")))
    trainer.train()
    assert trainer.state.global_step == 2


def test_labeled_pairs_with_scores_are_refused_naming_the_formats_to_mine(pairs_and_model):
    with pytest.raises(DataFormatError, match="output_format='triplet'"):
        load_pairs(_mined(pairs_and_model, "labeled-pair", output_scores=True))


@pytest.mark.parametrize("label", [2, "1", None, 0.5])
def test_a_label_other_than_0_or_1_is_refused_naming_the_row(label):
    rows = [{"anchor": "a", "positive": "p", "label": 1}, {"anchor": "a", "positive": "n", "label": label}]
    with pytest.raises(DataFormatError, match=r"row 1.*'label'.*not 0 or 1"):
        load_pairs(rows)


def test_a_labeled_list_needs_one_label_per_text():
    rows = [{"anchor": "a", "positive": ["p", "n"], "labels": [1]}]
    with pytest.raises(DataFormatError, match="one label per text"):
        load_pairs(rows)


def test_a_query_table_missing_columns_is_refused_naming_them(tmp_path, pairs_and_model):
    _, _, train = pairs_and_model
    with pytest.raises(ConfigError, match=r"lacks the column\(s\) \['positive_ids'\]"):
        _trainer(tmp_path, train.queries.remove_columns("positive_ids"), corpus=train.corpus)
    with pytest.raises(ConfigError, match=r"train_dataset is a DatasetDict with the splits \['train'\]"):
        _trainer(tmp_path, datasets.DatasetDict({"train": train.queries}), corpus=train.corpus)
    with pytest.raises(ConfigError, match=r"eval_dataset\['test'\] looks like sentence-transformers.*load_pairs"):
        _trainer(tmp_path, train, eval_dataset=datasets.DatasetDict({"dev": train.queries,
                                                                     "test": pairs_and_model[0]}))
    with pytest.raises(ConfigError, match=r"corpus lacks the column\(s\) \['doc_id'\]"):
        _trainer(tmp_path, train.queries, corpus=train.corpus.rename_column("doc_id", "_id"))
