"""Card data: :class:`CardData` (everything a retriever or corrector card shows) and the pure functions that fill it
from plain values (arguments, ``Trainer.state.log_history``, the models), with no trainer in sight.

The trainer-facing part (collecting these facts from a running :class:`~hf_corrector.CorrectorTrainer`) lives beside
the trainer in :mod:`hf_corrector.training.model_card`; rendering is :mod:`hf_corrector.hub.cards`.

Example:
    >>> card = CardData(model_name="my-retriever")
    >>> update_from_history(card, [{"step": 10, "eval_ndcg@10": 0.5}]).final_metrics
    {'ndcg@10': 0.5}
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult

from .._version import __version__
from ..utils.card_text import CACHE_TAGS, CITATIONS  # noqa: F401  (re-exported: part of the card data)
from ..utils.hub_ids import public_model_id, public_name

if TYPE_CHECKING:
    import datasets
    from transformers import TrainingArguments

    from ..data.format import RetrievalData
    from ..models.corrector import CorrectorModel
    from ..models.retriever import RetrieverModel

LIBRARY_NAME = "hf-corrector"
ST_LIBRARY_NAME = "sentence-transformers"
TAGS = ["dense-retrieval", "hf-corrector", "corrector-networks", "generated_from_trainer"]
#: tags of a sentence-transformers model card (the retriever's)
ST_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction"]
#: model-index metric types: the Hub's standard names (``ndcg_at_10``...), for the fresh-corpus metrics only
_STANDARD_METRICS = re.compile(r"(ndcg|recall|mrr|map|precision|accuracy)(@\d+)?")


# Arguments that are bookkeeping, not hyperparameters (never shown in the hyperparameter table).
_NOT_HYPERPARAMETERS = {"output_dir", "logging_dir", "run_name", "push_to_hub", "report_to", "overwrite_output_dir",
                        "disable_tqdm", "use_cpu", "no_cuda", "local_rank", "resume_from_checkpoint", "do_train",
                        "do_eval", "do_predict", "project", "trackio_space_id", "trackio_bucket_id"}
_NOT_HYPERPARAMETER_PREFIXES = ("hub_", "logging_", "save_", "dataloader_", "ddp_", "eval_", "per_device_eval",
                                "push_to_hub_", "include_", "log_", "torch_compile", "fsdp", "deepspeed",
                                "accelerator")
# Always shown (when set), default or not: what a reader needs to reproduce the run.
_CORE_HYPERPARAMETERS = ("learning_rate", "per_device_train_batch_size", "max_steps", "num_train_epochs",
                         "num_negatives", "correction", "seed")
_EVAL_SKIP = {"runtime", "samples_per_second", "steps_per_second", "loss"}
_STALENESS_KEYS = ("staleness_cos_stale", "staleness_cos_corrected", "negatives_overlap_fresh")


@dataclass
class CardData:
    """Everything the retriever and corrector cards show. Fields left ``None`` are left out of the card.

    User-facing fields that training never overwrites: ``license``, ``language``, ``extra_tags``, ``cache_repo_id``
    (a published :class:`~hf_corrector.StaleCache` to point readers at) and ``description``.
    """

    model_name: str | None = None
    repo_id: str | None = None
    base_model: str | None = None
    train_dataset_name: str | None = None
    eval_dataset_name: str | None = None
    num_train_queries: int | None = None
    num_train_pairs: int | None = None
    num_eval_queries: int | None = None
    num_docs: int | None = None
    strategy: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    retriever: dict[str, Any] = field(default_factory=dict)
    corrector: dict[str, Any] | None = None
    reembedding_cost: dict[str, Any] = field(default_factory=dict)
    global_step: int | None = None
    epoch: float | None = None
    staleness: dict[str, Any] = field(default_factory=dict)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    framework_versions: dict[str, str] = field(default_factory=dict)
    citations: list[str] = field(default_factory=lambda: [CITATIONS["corrector"]])
    widget: list[dict[str, Any]] = field(default_factory=list)
    #: the saved retriever carries the sentence-transformers modules (its card is a sentence-transformers card)
    sentence_transformers: bool = True
    # set by users, never by training
    license: str | None = None
    language: str | list[str] | None = None
    extra_tags: list[str] = field(default_factory=list)
    cache_repo_id: str | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def final_metrics(self) -> dict[str, float]:
        """The metrics of the last evaluation (``{}`` if none)."""
        return dict(self.eval_rows[-1]["metrics"]) if self.eval_rows else {}


def framework_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("hf-corrector", "transformers", "torch", "datasets", "huggingface-hub", "tokenizers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            if dist == "hf-corrector":
                out[dist] = __version__
    return out


def _is_hyperparameter(name: str) -> bool:
    return (name not in _NOT_HYPERPARAMETERS and not name.endswith("_token")
            and not name.startswith(_NOT_HYPERPARAMETER_PREFIXES))


def declared_defaults(args: TrainingArguments) -> dict[str, Any]:
    """The declared default of every init field of ``type(args)``, in ``to_dict()`` form (enums as values).

    Never builds a default instance: ``TrainingArguments.__post_init__`` resets the global Accelerator state, which
    breaks a trainer that is running.
    """
    out = {}
    for f in dataclasses.fields(args):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            value = f.default_factory()  # type: ignore[misc]
        else:
            continue
        out[f.name] = value.value if isinstance(value, Enum) else value
    return out


def _blank(value: Any) -> bool:
    return value is None or value is False or value == "" or value == [] or value == {}


def _same(a: Any, b: Any) -> bool:
    if _blank(a) and _blank(b):  # __post_init__ normalisations: None -> False, "" -> []
        return True
    if isinstance(a, Enum):
        a = a.value
    if isinstance(b, Enum):
        b = b.value
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def non_default_hyperparameters(args: TrainingArguments, always: tuple[str, ...] = _CORE_HYPERPARAMETERS
                                ) -> dict[str, Any]:
    """Hyperparameters that differ from the declared defaults of ``type(args)`` (plus the core ones, always).

    Tokens and bookkeeping arguments (output folders, logging, saving, Hub settings) are never included.
    """
    current = args.to_dict()
    default = declared_defaults(args)
    uses_max_steps = current.get("max_steps", -1) not in (-1, None)
    out = {}
    for name, value in current.items():
        if not _is_hyperparameter(name):
            continue
        if name in always:
            if (name == "max_steps" and not uses_max_steps) or (name == "num_train_epochs" and uses_max_steps):
                continue
            out[name] = value
        elif name in default and not _same(default[name], value):
            out[name] = value
    return {name: (public_name(value) if _is_local_path(value) else value) for name, value in out.items()}


def _is_local_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and (os.path.isabs(value) or value.startswith(("./", "../", "~"))
                                                       or (os.sep in value and os.path.exists(value)))


def eval_rows_from_history(log_history: list[dict[str, Any]], prefix: str = "eval_") -> list[dict[str, Any]]:
    """Evaluation rows (``step``, ``epoch``, ``metrics``) from ``Trainer.state.log_history``; one per step."""
    rows: dict[Any, dict[str, Any]] = {}
    for entry in log_history:
        metrics = {k[len(prefix):]: v for k, v in entry.items() if k.startswith(prefix)
                   and k[len(prefix):] not in _EVAL_SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)}
        if metrics:
            rows[entry.get("step")] = {"step": entry.get("step"), "epoch": entry.get("epoch"), "metrics": metrics}
    return list(rows.values())


def staleness_from_history(log_history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last logged value (and its step) of each staleness statistic."""
    out: dict[str, Any] = {}
    for entry in log_history:
        for key in _STALENESS_KEYS:
            if key in entry:
                out[key] = entry[key]
                out["step"] = entry.get("step")
    return out


def metric_label(name: str) -> str:
    """``corrected_ndcg@10`` -> ``nDCG@10 (corrected)``."""
    kind = ""
    for infix in ("stale_", "corrected_"):
        if name.startswith(infix):
            kind, name = infix[:-1], name[len(infix):]
    base, _, cut = name.partition("@")
    pretty = {"ndcg": "nDCG", "recall": "Recall", "mrr": "MRR", "map": "MAP", "precision": "P",
              "reembedding_cost": "Re-embedding cost"}.get(base, base)
    label = f"{pretty}@{cut}" if cut else pretty
    return f"{label} ({kind})" if kind else label


def eval_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Metric names in a stable order: fresh, stale, corrected; the re-embedding cost last."""
    names: list[str] = []
    for row in rows:
        names.extend(n for n in row["metrics"] if n not in names)

    def order(n: str) -> tuple[int, int]:
        group = 1 if n.startswith("stale_") else 2 if n.startswith("corrected_") else 3 if "@" not in n else 0
        return group, names.index(n)

    return sorted(names, key=order)


def eval_results(card: CardData) -> list[EvalResult]:
    """``model-index`` entries for the last evaluation's ranking metrics, with the Hub's standard metric types
    (``ndcg_at_10``, ``recall_at_100``, ``mrr_at_10``...).

    Only the model's own quality goes there (documents freshly encoded); the stale and corrected cache metrics are
    training diagnostics and stay in the card's table.
    """
    metrics = card.final_metrics
    dataset = public_name(card.eval_dataset_name or card.train_dataset_name) or "custom"
    out = []
    for name, value in metrics.items():
        if not _STANDARD_METRICS.fullmatch(name):
            continue
        out.append(EvalResult(task_type="text-retrieval", task_name="Retrieval", dataset_type=dataset,
                              dataset_name=dataset, metric_type=name.replace("@", "_at_"), metric_value=value,
                              metric_name=metric_label(name)))
    return out


def dataset_name(data: RetrievalData | datasets.Dataset | None) -> str | None:
    """A printable name of a RetrievalData / Dataset (``None`` when unnamed)."""
    name = getattr(data, "name", None)
    if isinstance(name, str) and name and name != "custom":
        return name
    info = getattr(data, "info", None)
    name = getattr(info, "dataset_name", None) if info is not None else None
    return name if isinstance(name, str) and name else None


def retriever_details(retriever: RetrieverModel) -> dict[str, Any]:
    cfg = retriever.config
    backbone = cfg.encoder_config.get("model_type") if isinstance(cfg.encoder_config, dict) else None
    params = sum(p.numel() for p in retriever.parameters())
    return {"embedding_dim": retriever.embedding_dim, "pooling": cfg.pooling, "normalize": cfg.normalize,
            "shared_towers": cfg.shared_towers, "query_max_length": cfg.query_max_length,
            "target_max_length": cfg.target_max_length, "query_prefix": cfg.query_prefix,
            "target_prefix": cfg.target_prefix, "softmax_temperature": cfg.softmax_temperature,
            "backbone": backbone, "num_parameters": params,
            "base_model_name_or_path": public_name(cfg.base_model_name_or_path)}


def corrector_details(corrector: CorrectorModel | None) -> dict[str, Any] | None:
    if corrector is None:
        return None
    cfg = corrector.config
    return {"architecture": cfg.architecture, "embedding_dim": cfg.embedding_dim,
            "hidden_dim": cfg.hidden_dim if cfg.architecture == "mlp" else None,
            "num_layers": cfg.num_layers if cfg.architecture == "mlp" else 1,
            "activation": cfg.activation if cfg.architecture == "mlp" else None, "dropout": cfg.dropout,
            "num_parameters": sum(p.numel() for p in corrector.parameters())}


def pick_base_model(retriever: RetrieverModel, exclude: str | None = None) -> str | None:
    """The Hub id this retriever was initialised from: its loaded checkpoint, else its backbone; a local copy in the
    Hugging Face cache counts as its Hub id. ``None`` when it only exists as a local folder."""
    cfg = retriever.config
    for name in (getattr(cfg, "name_or_path", None), getattr(cfg, "base_model_name_or_path", None)):
        hub_id = public_model_id(name)
        if hub_id is not None and hub_id != exclude:
            return hub_id
    return None


def update_from_history(card: CardData, log_history: list[dict[str, Any]]) -> CardData:
    """Merge the evaluation rows and staleness statistics of ``state.log_history`` into ``card`` (idempotent).

    Rows already in the card are kept (``Trainer.train`` starts a fresh log history, so an evaluation run before
    training would otherwise be lost); a row of the same step is replaced by the history's.
    """
    rows = {row["step"]: row for row in card.eval_rows}
    rows.update({row["step"]: row for row in eval_rows_from_history(log_history)})
    card.eval_rows = sorted(rows.values(), key=lambda r: (r["step"] is None, r["step"] or 0))
    staleness = staleness_from_history(log_history)
    if staleness:
        card.staleness = staleness
    return card


def distinct_queries(rows: datasets.Dataset | None) -> int | None:
    """Distinct query ids of a queries / training-examples dataset (training rows are (query, positive) pairs)."""
    if rows is None:
        return None
    if "query_id" in rows.column_names:
        return len(set(rows["query_id"]))
    return len(rows)


def widget_examples(train: datasets.Dataset | None, texts: list[str] | None, max_chars: int = 300
                    ) -> list[dict[str, Any]]:
    """A ``sentence-similarity`` widget entry from the training examples (``query``, ``positive_rows``) and the
    corpus texts: a query, its positive and two other texts."""
    if train is None or not texts or len(train) == 0 or "query" not in train.column_names:
        return []
    row = train[0]
    positive = row.get("positive_rows", row.get("positive_row"))
    first = positive[0] if isinstance(positive, (list, tuple)) and positive else positive
    picked = [int(first)] if isinstance(first, int) and 0 <= first < len(texts) else []
    picked += [i for i in range(len(texts)) if i not in picked][: 3 - len(picked)]
    return [{"source_sentence": str(row["query"])[:max_chars], "sentences": [str(texts[i])[:max_chars] for i in picked]}]


__all__ = ["CITATIONS", "LIBRARY_NAME", "TAGS", "CardData", "corrector_details", "dataset_name", "distinct_queries",
           "eval_results", "eval_rows_from_history", "framework_versions", "non_default_hyperparameters", "pick_base_model",
           "retriever_details", "staleness_from_history", "update_from_history", "widget_examples"]
