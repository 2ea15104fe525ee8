"""Training examples and their collation.

:func:`prepare_train_examples` turns queries with positive doc ids into one example per (query, positive) pair,
holding cache row numbers; :class:`CorrectorDataCollator` tokenises the queries of a batch. Targets are
tokenised later, in the trainer, once the negatives are known.

Example:
    >>> examples = prepare_train_examples(data.queries, data.doc_index())  # doctest: +SKIP
    >>> examples.column_names  # doctest: +SKIP
    ['example_id', 'query_id', 'query', 'positive_row', 'positive_rows', 'negative_rows']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from ..errors import ConfigError, DataFormatError

logger = logging.getLogger(__name__)


def prepare_train_examples(queries: datasets.Dataset, doc_index: Mapping[str, int]) -> datasets.Dataset:
    """One row per (query, positive): ``example_id``, ``query_id``, ``query``, ``positive_row``, ``positive_rows``
    and ``negative_rows`` (the rows of the query's ``negative_ids`` given by the data; empty when there are none)."""
    rows: dict[str, list] = {"example_id": [], "query_id": [], "query": [], "positive_row": [], "positive_rows": [],
                             "negative_rows": []}
    given = queries["negative_ids"] if "negative_ids" in queries.column_names else [[] for _ in range(len(queries))]
    for qid, text, positives, negatives in zip(queries["query_id"], queries["query"], queries["positive_ids"], given):
        pos_rows = _rows_of(qid, "positive", positives, doc_index)
        pos_set = set(pos_rows)
        neg_rows = [r for r in dict.fromkeys(_rows_of(qid, "negative", negatives or [], doc_index)) if r not in pos_set]
        for r in pos_rows:
            rows["example_id"].append(len(rows["example_id"]))
            rows["query_id"].append(qid)
            rows["query"].append(text)
            rows["positive_row"].append(r)
            rows["positive_rows"].append(pos_rows)
            rows["negative_rows"].append(neg_rows)
    if not rows["example_id"]:
        raise DataFormatError("no training pairs: every query needs at least one positive in the corpus")
    return datasets.Dataset.from_dict(rows)


def _rows_of(qid: str, kind: str, doc_ids: list[str], doc_index: Mapping[str, int]) -> list[int]:
    try:
        return [doc_index[d] for d in doc_ids]
    except KeyError as err:
        raise DataFormatError(f"query {qid!r}: {kind} doc id {err.args[0]!r} is not in the corpus") from None


@dataclass
class CorrectorDataCollator:
    """Tokenise queries; carry positive rows, all positives (to exclude from negatives), the data's negatives
    (``given_negative_rows``, -1 = padding) and the example id."""

    tokenizer: Any
    query_max_length: int = 64
    query_prefix: str = ""

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [self.query_prefix + f["query"] for f in features],
            padding=True,
            truncation=True,
            max_length=self.query_max_length,
            return_tensors="pt",
        )
        width = max(len(f["positive_rows"]) for f in features)
        exclude = torch.full((len(features), width), -1, dtype=torch.long)
        for i, f in enumerate(features):
            exclude[i, : len(f["positive_rows"])] = torch.as_tensor(f["positive_rows"], dtype=torch.long)
        given = [f.get("negative_rows") or [] for f in features]
        negatives = torch.full((len(features), max((len(g) for g in given), default=0)), -1, dtype=torch.long)
        for i, g in enumerate(given):
            negatives[i, : len(g)] = torch.as_tensor(g, dtype=torch.long)
        return {
            "given_negative_rows": negatives,
            "query_input_ids": batch["input_ids"],
            "query_attention_mask": batch["attention_mask"],
            "positive_rows": torch.as_tensor([f["positive_row"] for f in features], dtype=torch.long),
            "exclude_rows": exclude,
            "example_ids": torch.as_tensor([f["example_id"] for f in features], dtype=torch.long),
        }


#: what the training step reads from a batch (``given_negative_rows`` is optional)
BATCH_KEYS = ("query_input_ids", "query_attention_mask", "positive_rows", "exclude_rows", "example_ids")


def check_collator(collator: Any, examples: datasets.Dataset | None) -> None:
    """A ``data_collator`` of the user's must turn the training examples into the batch the step reads: tried on
    two examples at once, so a standard collator (``DataCollatorWithPadding``, ``default_data_collator``) is
    refused before training, naming :class:`CorrectorDataCollator`."""
    if collator is None or isinstance(collator, CorrectorDataCollator) or examples is None or not len(examples):
        return
    name = getattr(collator, "__name__", type(collator).__name__)
    what = (f"CorrectorTrainer's examples are rows of {examples.column_names} (query texts and cache rows; the "
            "targets are tokenised by the trainer once the negatives are chosen), and a batch needs "
            f"{', '.join(BATCH_KEYS)}. Pass data_collator=CorrectorDataCollator(tokenizer, query_max_length=..., "
            "query_prefix=...) (hf_corrector.training.collator; subclass it to change the query tokenisation), or "
            "leave data_collator out")
    try:
        batch = collator([examples[i] for i in range(min(2, len(examples)))])
    except Exception as err:  # any failure of a foreign collator: say what the trainer needs instead
        raise ConfigError(f"data_collator={name} cannot collate the training examples "
                          f"({type(err).__name__}: {str(err)[:200]}). {what}") from err
    missing = [k for k in BATCH_KEYS if not isinstance(batch, Mapping) or k not in batch]
    if missing:
        raise ConfigError(f"data_collator={name} returns a batch without {', '.join(missing)}. {what}")


class CorrectorBatch(dict):
    """A training batch: a dict whose missing keys (``inputs.pop("labels")``, as the Trainer docs' ``compute_loss``
    override writes it) raise a ``KeyError`` saying what the batch holds and what to call instead."""

    def __missing__(self, key):
        raise KeyError(f"{key!r}: a CorrectorTrainer batch holds {sorted(self)} and no {key!r}; the trainer chooses "
                       "each query's targets (its positive and negatives) itself. In a compute_loss override, "
                       "outputs = model(**inputs) runs the step (outputs.loss; outputs.logits and outputs.labels: "
                       "the task loss is cross_entropy(logits, labels); outputs.query_embeddings / target_embeddings), "
                       "or call super().compute_loss(model, inputs, return_outputs=True)")

    def pop(self, key, *default):
        if key not in self and not default:
            self.__missing__(key)
        return super().pop(key, *default)
