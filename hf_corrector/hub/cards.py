"""Model and dataset cards: what a published retriever, corrector or stale cache says about itself.

Cards are Jinja templates (``model_cards/*.md.j2``, shipped in the wheel as ``hf_corrector.model_cards``) rendered
with :meth:`huggingface_hub.ModelCard.from_template`; the YAML header is a :class:`huggingface_hub.ModelCardData`
(tags, ``base_model``, ``datasets`` and a ``model-index`` built from :class:`huggingface_hub.EvalResult`). A saved
retriever is a sentence-transformers model, so its card reads like one (``library_name: sentence-transformers``,
``pipeline_tag: sentence-similarity``, a ``widget``); the corrector's card has ``library_name: hf-corrector``.

Cards never show a local path: a base model or dataset that is not a Hub id is named by its folder name only, a
local copy of a Hub model in the Hugging Face cache (``models--org--name/snapshots/...``) by its Hub id, and every
snippet in a card runs as written (tested against a local Hub).

:class:`CardData` holds everything a card shows. :class:`~hf_corrector.hub.callbacks.ModelCardCallback` fills it
during training; :func:`card_data_from_trainer` fills it from a trainer at any time.

Example:
    >>> data = CardData(model_name="my-retriever", base_model="org/base-encoder")  # doctest: +SKIP
    >>> print(render_retriever_card(data, repo_id="me/my-retriever"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .._version import __version__

if TYPE_CHECKING:
    from ..models.corrector import CorrectorModel

logger = logging.getLogger(__name__)

LIBRARY_NAME = "hf-corrector"
ST_LIBRARY_NAME = "sentence-transformers"
TAGS = ["dense-retrieval", "hf-corrector", "corrector-networks", "generated_from_trainer"]
#: tags of a sentence-transformers model card (the retriever's)
ST_TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction"]
#: model-index metric types: the Hub's standard names (``ndcg_at_10``...), for the fresh-corpus metrics only
_STANDARD_METRICS = re.compile(r"(ndcg|recall|mrr|map|precision|accuracy)(@\d+)?")
CACHE_TAGS = ["hf-corrector", "embeddings", "stale-cache", "dense-retrieval"]
TEMPLATES_PACKAGE = "hf_corrector.model_cards"
RETRIEVER_TEMPLATE = "retriever.md.j2"
CORRECTOR_TEMPLATE = "corrector.md.j2"
CACHE_TEMPLATE = "cache_dataset.md.j2"
REDACTED = "<REDACTED>"

CITATIONS = {
    "corrector": """@inproceedings{monath2024fresh,
  title     = {A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks},
  author    = {Monath, Nicholas and Grathwohl, Will and Boratko, Michael and Fergus, Rob and McCallum, Andrew and Zaheer, Manzil},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {235},
  year      = {2024}
}""",
    "ance": """@inproceedings{xiong2021approximate,
  title     = {Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval},
  author    = {Xiong, Lee and Xiong, Chenyan and Li, Ye and Tang, Kwok-Fung and Liu, Jialin and Bennett, Paul N. and Ahmed, Junaid and Overwijk, Arnold},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}""",
    "ance-tele": """@inproceedings{sun2022reduce,
  title     = {Reduce Catastrophic Forgetting of Dense Retrieval Training with Teleportation Negatives},
  author    = {Sun, Si and Xiong, Chenyan and Yu, Yue and Overwijk, Arnold and Liu, Zhiyuan and Bao, Jie},
  booktitle = {Proceedings of the 2022 Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  year      = {2022}
}""",
    "nystrom": """@inproceedings{monath2023improving,
  title     = {Improving Dual-Encoder Training through Dynamic Indexes for Negative Mining},
  author    = {Monath, Nicholas and Zaheer, Manzil and Allen, Kelsey and McCallum, Andrew},
  booktitle = {Proceedings of The 26th International Conference on Artificial Intelligence and Statistics (AISTATS)},
  year      = {2023}
}""",
}

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
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
_HF_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+)/snapshots/[^/]+")


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


# ---------------------------------------------------------------------------------------------------------------------
# templates
def template_path(name: str) -> Path:
    """Path of a card template: from the source tree next to this package (a checkout or a worktree, whose
    templates may differ from an editable install's), else from the installed package ``hf_corrector.model_cards``."""
    source = Path(__file__).resolve().parents[2] / "model_cards" / name
    if source.is_file():
        return source
    try:
        candidate = resources.files(TEMPLATES_PACKAGE) / name
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError):
        pass
    raise FileNotFoundError(f"card template {name!r} not found in {source.parent} or {TEMPLATES_PACKAGE}")


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` can be a Hub repo id (``owner/name`` or a legacy ``name``) and is not a local path."""
    if not name or not isinstance(name, str):
        return False
    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def public_model_id(name: str | os.PathLike | None) -> str | None:
    """The Hub id a model name stands for: a Hub id itself, or the id of a Hugging Face cache snapshot folder
    (``.../models--org--name/snapshots/<sha>``); ``None`` for any other local path.

    Example:
        >>> public_model_id("/home/me/.cache/huggingface/hub/models--org--name/snapshots/abc123")
        'org/name'
        >>> public_model_id("/data/my-model") is None
        True
    """
    if name is None:
        return None
    text = str(name)
    if is_hub_id(text):
        return text
    match = _HF_CACHE_SNAPSHOT.search(text.replace(os.sep, "/"))
    if match:
        candidate = match.group(1).replace("--", "/")
        return candidate if is_hub_id(candidate) else None
    return None


def public_name(name: str | os.PathLike | None) -> str | None:
    """What a card may show for a model or dataset name: its Hub id, else the last part of a local path (never the
    path itself; ``None`` for an empty name).

    Example:
        >>> public_name("/home/me/run1/my-model"), public_name("org/name")
        ('my-model', 'org/name')
    """
    if name is None or str(name) == "":
        return None
    hub_id = public_model_id(name)
    if hub_id is not None:
        return hub_id
    text = str(name).rstrip("/\\")
    return Path(text).name or None


def scrub_local_paths(text: str, paths: list[str | os.PathLike | None] | tuple = ()) -> str:
    """Replace each local path of ``paths`` (and its resolved form) occurring in ``text`` by its folder name.

    The last line of defence for cards: values meant for cards go through :func:`public_name` first.
    """
    candidates = set()
    for path in paths:
        if not path:
            continue
        raw = str(path)
        if not (os.path.isabs(raw) or raw.startswith(("~", "."))):
            continue
        candidates.add(raw)
        try:
            candidates.add(str(Path(raw).expanduser().resolve()))
        except (OSError, RuntimeError):
            pass
    for candidate in sorted(candidates, key=len, reverse=True):  # longest first: nested paths
        if len(candidate) <= 1:
            continue
        # the candidate and any path below it, e.g. the temp dir and /home/me/run1/model -> "model"
        pattern = re.compile(re.escape(candidate.rstrip("/\\")) + r"(?:[/\\][\w.\-]+)*(?![\w.\-])")
        text = pattern.sub(lambda m: Path(m.group(0)).name or "local folder", text)
    return text


def redact(text: str, secrets: list[str | None] | tuple[str | None, ...] = ()) -> str:
    """Replace every secret (Hub tokens) occurring in ``text``."""
    for secret in secrets:
        if secret and isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def known_secrets(args: Any = None) -> list[str]:
    """Tokens that must never be written: ``args.*_token`` and the ``HF_TOKEN`` environment variable."""
    secrets = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    if args is not None:
        for f in dataclasses.fields(args) if dataclasses.is_dataclass(args) else []:
            if f.name.endswith("_token"):
                value = getattr(args, f.name, None)
                secrets.append(value if isinstance(value, str) else None)
    return [s for s in secrets if s]


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


def declared_defaults(args: Any) -> dict[str, Any]:
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


def non_default_hyperparameters(args: Any, always: tuple[str, ...] = _CORE_HYPERPARAMETERS) -> dict[str, Any]:
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


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "–"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _tags(card: CardData, extra: list[str] | None = None, first: bool = False) -> list[str]:
    """Our tags, the card's ``extra_tags`` and ``extra`` (``first``: ``extra`` leads, as ST tags do)."""
    tags = list(extra or []) + list(TAGS) if first else list(TAGS)
    for tag in list(card.extra_tags) + list(extra or []):
        if tag not in tags:
            tags.append(tag)
    return tags


# ---------------------------------------------------------------------------------------------------------------------
# filling CardData
def dataset_name(data: Any) -> str | None:
    """A printable name of a RetrievalData / Dataset (``None`` when unnamed)."""
    name = getattr(data, "name", None)
    if isinstance(name, str) and name and name != "custom":
        return name
    info = getattr(data, "info", None)
    name = getattr(info, "dataset_name", None) if info is not None else None
    return name if isinstance(name, str) and name else None


def retriever_details(retriever: Any) -> dict[str, Any]:
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


def pick_base_model(retriever: Any, exclude: str | None = None) -> str | None:
    """The Hub id this retriever was initialised from: its loaded checkpoint, else its backbone; a local copy in the
    Hugging Face cache counts as its Hub id. ``None`` when it only exists as a local folder."""
    cfg = retriever.config
    for name in (getattr(cfg, "name_or_path", None), getattr(cfg, "base_model_name_or_path", None)):
        hub_id = public_model_id(name)
        if hub_id is not None and hub_id != exclude:
            return hub_id
    return None


def update_static(card: CardData, trainer: Any) -> CardData:
    """Fill the fields that come from the trainer's objects and arguments (not from the logs)."""
    args = trainer.args
    repo_id = getattr(trainer, "hub_model_id", None) or args.hub_model_id
    card.repo_id = repo_id if is_hub_id(repo_id) else None
    card.model_name = (repo_id or "").split("/")[-1] or Path(args.output_dir).name
    retriever = trainer.retriever
    card.retriever = retriever_details(retriever)
    if card.base_model is None or card.base_model == card.repo_id:
        card.base_model = pick_base_model(retriever, exclude=card.repo_id)
    card.corrector = corrector_details(trainer.corrector)
    num_refreshes = int(trainer.cost.get("num_refreshes", 0) or 0)
    card.strategy, keys = strategy_and_citations(trainer, num_refreshes)
    card.hyperparameters = non_default_hyperparameters(args)
    card.num_docs = len(trainer.doc_ids)
    train = trainer.train_examples
    card.num_train_queries = _distinct_queries(train)
    card.num_train_pairs = len(train) if train is not None else None
    card.num_eval_queries = _distinct_queries(trainer.eval_queries)
    if not card.widget:
        card.widget = widget_examples(trainer)
    total = trainer.total_reembedding_cost()
    card.reembedding_cost = {**trainer.cost, "total": total,
                             "corpus_passes": round(total / max(len(trainer.doc_ids), 1), 3)}
    card.global_step = int(trainer.state.global_step)
    card.epoch = trainer.state.epoch
    card.framework_versions = framework_versions()
    card.citations = [CITATIONS[k] for k in keys]
    return card


def _distinct_queries(rows: Any) -> int | None:
    """Distinct query ids of a queries / training-examples dataset (training rows are (query, positive) pairs)."""
    if rows is None:
        return None
    if "query_id" in getattr(rows, "column_names", []):
        return len(set(rows["query_id"]))
    return len(rows)


def strategy_and_citations(trainer: Any, num_refreshes: int = 0) -> tuple[str, list[str]]:
    """The training strategy in one line and the :data:`CITATIONS` keys, asked of the trainer's
    :class:`~hf_corrector.training.strategy.NegativeStrategy` with the run's own miner (its sampler may be a user's);
    ANCE is cited when a full refresh ran."""
    strategy, miner = trainer.strategy, trainer.negatives
    keys = strategy.citations(miner, num_refreshes)
    unknown = [k for k in keys if k not in CITATIONS]
    if unknown:
        logger.warning("model card: no citation for %s (known: %s)", unknown, ", ".join(CITATIONS))
    return strategy.description(miner), [k for k in keys if k in CITATIONS]


def widget_examples(trainer: Any, max_chars: int = 300) -> list[dict[str, Any]]:
    """A ``sentence-similarity`` widget entry from the training data: a query, its positive and two other texts."""
    train = getattr(trainer, "train_examples", None)
    texts = getattr(trainer, "corpus_texts", None)
    if train is None or not texts or len(train) == 0 or "query" not in train.column_names:
        return []
    row = train[0]
    positive = row.get("positive_rows", row.get("positive_row"))
    first = positive[0] if isinstance(positive, (list, tuple)) and positive else positive
    picked = [int(first)] if isinstance(first, int) and 0 <= first < len(texts) else []
    picked += [i for i in range(len(texts)) if i not in picked][: 3 - len(picked)]
    return [{"source_sentence": str(row["query"])[:max_chars], "sentences": [str(texts[i])[:max_chars] for i in picked]}]


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


def card_data_from_trainer(trainer: Any, card: CardData | None = None) -> CardData:
    """A complete :class:`CardData` for a :class:`~hf_corrector.CorrectorTrainer` (its callback's, if registered)."""
    if card is None:
        callback = getattr(trainer, "model_card_callback", None)
        card = callback.card_data if callback is not None else CardData()
    update_static(card, trainer)
    update_from_history(card, trainer.state.log_history)
    return card


# ---------------------------------------------------------------------------------------------------------------------
# rendering
def _model_card_data(card: CardData, base_model: str | None, tags: list[str], eval_results_: list[EvalResult] | None,
                     model_name: str | None, datasets_: list[str] | None, sentence_transformers: bool = False
                     ) -> ModelCardData:
    extra: dict[str, Any] = {}
    if sentence_transformers and card.widget:
        extra["widget"] = card.widget
    return ModelCardData(
        library_name=ST_LIBRARY_NAME if sentence_transformers else LIBRARY_NAME,
        tags=tags,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[d for d in (datasets_ or []) if is_hub_id(d)] or None,
        eval_results=eval_results_ or None,
        model_name=model_name if eval_results_ else None,
        license=card.license,
        language=card.language,
        pipeline_tag="sentence-similarity" if sentence_transformers else "feature-extraction",
        **extra,
    )


def _local_paths(card: CardData) -> list[str | None]:
    """Local paths a card must not show (scrubbed from the rendered text as a last resort)."""
    return [card.base_model, card.train_dataset_name, card.eval_dataset_name, os.getcwd(), tempfile.gettempdir(),
            os.path.expanduser("~")]


def _public_card(card: CardData) -> dict[str, Any]:
    """``card`` as the templates see it: names are Hub ids or bare folder names, never local paths."""
    data = card.to_dict()
    for key in ("base_model", "train_dataset_name", "eval_dataset_name"):
        data[key] = public_name(data[key])
    data["retriever"] = dict(data["retriever"] or {})
    if "base_model_name_or_path" in data["retriever"]:
        data["retriever"]["base_model_name_or_path"] = public_name(data["retriever"]["base_model_name_or_path"])
    return data


def render_retriever_card(card: CardData, repo_id: str | None = None, secrets: list[str] | None = None) -> str:
    """The retriever's README.md (YAML metadata + Markdown): a sentence-transformers card (unless
    ``card.sentence_transformers`` is off) whose snippets run as written once the model is at ``repo_id``."""
    repo_id = repo_id or card.repo_id
    load_id = repo_id or card.model_name or "path/to/model"
    results = eval_results(card)
    model_name = card.model_name or (repo_id or "retriever").split("/")[-1]
    datasets_ = [d for d in (card.train_dataset_name,) if d]
    extra = ST_TAGS if card.sentence_transformers else ["sentence-embeddings"]
    base_model = public_model_id(card.base_model)
    data = _model_card_data(card, base_model if base_model != repo_id else None, _tags(card, extra, first=True),
                            results, model_name, datasets_, sentence_transformers=card.sentence_transformers)
    rows = card.eval_rows
    columns = eval_columns(rows)
    c = _public_card(card)
    text = ModelCard.from_template(
        data, template_path=str(template_path(RETRIEVER_TEMPLATE)),
        c=c, repo_id=repo_id, load_id=load_id, model_title=model_name,
        eval_columns=[(name, metric_label(name)) for name in columns], eval_rows=rows,
        has_corrector=card.corrector is not None, fmt=_fmt, cost=card.reembedding_cost,
        base_model_link=_link(base_model),
        base_model_name=c["base_model"] or c["retriever"].get("base_model_name_or_path"),
        st=card.sentence_transformers,
    ).content
    return redact(scrub_local_paths(text, _local_paths(card)), secrets or known_secrets())


def corrector_base_model(card: CardData, retriever_repo_id: str | None, home_repo_id: str | None) -> str | None:
    """What the corrector card names as ``base_model``: the retriever whose cache it corrects when that is another
    repo, else the model the retriever was trained from; never the repo the corrector itself lives in."""
    for candidate in (retriever_repo_id, public_model_id(card.base_model)):
        if is_hub_id(candidate) and candidate != home_repo_id:
            return candidate
    return None


def render_corrector_card(card: CardData, retriever_repo_id: str | None = None, repo_id: str | None = None,
                          subfolder: str | None = None, secrets: list[str] | None = None) -> str:
    """The corrector's README.md; ``base_model`` names the retriever whose cache it corrects (or, in the retriever's
    own repo, the retriever's base model), never the corrector's own repo.

    ``repo_id``/``subfolder``: where the corrector lives (its own repo, or ``corrector/`` in the retriever's).
    """
    retriever_repo_id = retriever_repo_id or card.repo_id
    home = repo_id or (retriever_repo_id if subfolder else None)
    load_id = repo_id or retriever_repo_id or card.model_name or "path/to/model"
    retriever_load_id = retriever_repo_id if is_hub_id(retriever_repo_id) else (load_id if subfolder else None)
    title = f"Corrector network for {public_name(retriever_repo_id) or card.model_name or 'a dense retriever'}"
    base_model = corrector_base_model(card, retriever_repo_id, home)
    data = _model_card_data(card, base_model, _tags(card, ["corrector"]), None, None,
                            [d for d in (card.train_dataset_name,) if d])
    text = ModelCard.from_template(
        data, template_path=str(template_path(CORRECTOR_TEMPLATE)),
        c=_public_card(card), retriever_repo_id=retriever_repo_id, load_id=load_id, subfolder=subfolder,
        retriever_load_id=retriever_load_id, model_title=title, fmt=_fmt, retriever_link=_link(retriever_repo_id),
    ).content
    return redact(scrub_local_paths(text, _local_paths(card)), secrets or known_secrets())


def _link(repo_id: str | None) -> str | None:
    if not repo_id:
        return None
    name = public_name(repo_id)
    return f"[`{name}`](https://huggingface.co/{name})" if is_hub_id(repo_id) else f"`{name}` (a local folder)"


__all__ = [
    "CITATIONS",
    "LIBRARY_NAME",
    "TAGS",
    "CardData",
    "card_data_from_trainer",
    "corrector_base_model",
    "eval_results",
    "eval_rows_from_history",
    "is_hub_id",
    "non_default_hyperparameters",
    "public_model_id",
    "public_name",
    "redact",
    "render_corrector_card",
    "render_retriever_card",
    "scrub_local_paths",
    "strategy_and_citations",
    "template_path",
]
