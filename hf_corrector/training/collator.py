"""Training examples and their collation.

:func:`prepare_train_examples` turns queries with positive doc ids into one example per (query, positive) pair,
holding cache row numbers; :class:`CorrectorDataCollator` tokenises the queries of a batch. Targets are
tokenised later, in the trainer, once the negatives are known.

Example:
    >>> examples = prepare_train_examples(data.queries, data.doc_index())  # doctest: +SKIP
    >>> examples.column_names  # doctest: +SKIP
    ['example_id', 'query_id', 'query', 'positive_row', 'positive_rows']
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from ..errors import DataFormatError

logger = logging.getLogger(__name__)


def prepare_train_examples(queries: datasets.Dataset, doc_index: Mapping[str, int]) -> datasets.Dataset:
    """One row per (query, positive): ``example_id``, ``query_id``, ``query``, ``positive_row``, ``positive_rows``."""
    rows: dict[str, list] = {"example_id": [], "query_id": [], "query": [], "positive_row": [], "positive_rows": []}
    for qid, text, positives in zip(queries["query_id"], queries["query"], queries["positive_ids"]):
        try:
            pos_rows = [doc_index[p] for p in positives]
        except KeyError as err:
            raise DataFormatError(f"query {qid!r}: positive doc id {err.args[0]!r} is not in the corpus") from None
        for r in pos_rows:
            rows["example_id"].append(len(rows["example_id"]))
            rows["query_id"].append(qid)
            rows["query"].append(text)
            rows["positive_row"].append(r)
            rows["positive_rows"].append(pos_rows)
    if not rows["example_id"]:
        raise DataFormatError("no training pairs: every query needs at least one positive in the corpus")
    return datasets.Dataset.from_dict(rows)


@dataclass
class CorrectorDataCollator:
    """Tokenise queries; carry positive rows, all positives (to exclude from negatives) and the example id."""

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
        return {
            "query_input_ids": batch["input_ids"],
            "query_attention_mask": batch["attention_mask"],
            "positive_rows": torch.as_tensor([f["positive_row"] for f in features], dtype=torch.long),
            "exclude_rows": exclude,
            "example_ids": torch.as_tensor([f["example_id"] for f in features], dtype=torch.long),
        }
