"""sentence-transformers' ``InformationRetrievalEvaluator`` on ``SentenceTransformer(saved)`` gives the numbers
``trainer.evaluate()`` gives on the same model and data (issue 23): the same vectors (queries truncated at the query
length, not the document length), the same similarity and the same nDCG@10, Recall@10 / @100 and MRR@10."""

from __future__ import annotations

import pytest

pytest.importorskip("sentence_transformers")
from sentence_transformers import SentenceTransformer  # noqa: E402
from sentence_transformers.evaluation import InformationRetrievalEvaluator  # noqa: E402

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, RetrievalData  # noqa: E402
from tests.tiny import TINY_TRAINING_DEFAULTS, WORDS, tiny_data, tiny_retriever  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Single-threaded (see conftest.one_thread)."""


def _with_long_queries(data: RetrievalData) -> RetrievalData:
    """Every other query made longer than query_max_length (16 tokens) and shorter than target_max_length (32)."""
    tail = " ".join(WORDS[:18])
    queries = data.queries.map(lambda row, i: {"query": row["query"] + " " + tail if i % 2 else row["query"]},
                               with_indices=True)
    return RetrievalData(queries=queries, corpus=data.corpus, name=data.name)


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_information_retrieval_evaluator_agrees_with_evaluate(tmp_path, shared, normalize):
    train, test = tiny_data()
    test = _with_long_queries(test)
    retriever = tiny_retriever(tmp_path, shared_towers=shared)
    retriever.config.normalize = normalize  # False: dot product, which the saved model must score with too
    args = CorrectorTrainingArguments(str(tmp_path / "out"), **{**TINY_TRAINING_DEFAULTS, "num_negatives": 3,
                                                               "max_steps": 4, "learning_rate": 3e-3})
    trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=train, eval_dataset=test)
    trainer.train()
    ours = trainer.evaluate()
    trainer.save_model(str(tmp_path / "saved"))

    model = SentenceTransformer(str(tmp_path / "saved"), device="cpu")
    assert model.similarity_fn_name == ("cosine" if normalize else "dot")
    evaluator = InformationRetrievalEvaluator(
        queries=dict(zip(test.queries["query_id"], test.queries["query"])),
        corpus=dict(zip(test.corpus["doc_id"], test.corpus["text"])),
        relevant_docs={q: set(p) for q, p in zip(test.queries["query_id"], test.queries["positive_ids"])},
        mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[10], precision_recall_at_k=[10, 100], map_at_k=[10],
        name="tiny", show_progress_bar=False, batch_size=16)
    theirs = evaluator(model)
    score = model.similarity_fn_name
    for metric in ("ndcg@10", "recall@10", "recall@100", "mrr@10"):  # evaluate() rounds to 5 places
        assert theirs[f"tiny_{score}_{metric}"] == pytest.approx(ours[f"eval_{metric}"], abs=5.1e-6), metric
    assert 0.05 < ours["eval_ndcg@10"] < 0.999  # a ranking with something to get right and wrong
