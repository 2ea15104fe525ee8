"""Model and dataset cards: what a published retriever, corrector or stale cache says about itself.

Cards are Jinja templates (``model_cards/*.md.j2``, shipped in the wheel as ``hf_corrector.model_cards``) rendered
with :meth:`huggingface_hub.ModelCard.from_template`; the YAML header is a :class:`huggingface_hub.ModelCardData`
(``library_name="hf-corrector"``, tags, ``base_model``, ``datasets`` and a ``model-index`` built from
:class:`huggingface_hub.EvalResult`).

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
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from ..models.corrector import CorrectorModel

logger = logging.getLogger(__name__)

LIBRARY_NAME = "hf-corrector"
TAGS = ["dense-retrieval", "hf-corrector", "corrector-networks", "generated_from_trainer"]
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
    """Path of a card template: from the installed package (``hf_corrector.model_cards``) or the source tree."""
    try:
        candidate = resources.files(TEMPLATES_PACKAGE) / name
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError):  # source checkout (or an editable install made before the mapping)
        pass
    source = Path(__file__).resolve().parents[2] / "model_cards" / name
    if source.is_file():
        return source
    raise FileNotFoundError(f"card template {name!r} not found in {TEMPLATES_PACKAGE} or {source.parent}")


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` can be a Hub repo id (``owner/name`` or a legacy ``name``) and is not a local path."""
    if not name or not isinstance(name, str):
        return False
    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


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
                from .. import __version__

                out[dist] = __version__
    return out


def describe_strategy(args: Any) -> str:
    """One line naming the training strategy selected by the arguments (see :mod:`hf_corrector.training.config`)."""
    refresh = int(getattr(args, "cache_refresh_steps", 0) or 0)
    correction = getattr(args, "correction", "mlp")
    if int(getattr(args, "num_negatives", 0)) == 0:
        text = "in-batch negatives only"
    elif correction in ("mlp", "linear"):
        name = "residual MLP" if correction == "mlp" else "linear"
        text = f"{name} corrector network over a stale cache"
        text += f", plus a full re-embedding every {refresh} steps" if refresh else ", no re-embedding"
    elif correction == "nystrom":
        text = "Nyström low-rank correction of a stale cache"
        text += f", plus a full re-embedding every {refresh} steps" if refresh else ""
    elif refresh:
        text = f"full re-embedding of the corpus every {refresh} steps (ANCE-style), no correction"
    else:
        text = "stale cache, no correction"
    extras = []
    if getattr(args, "num_negatives", 0) and getattr(args, "negative_sampling", "topk") == "gumbel":
        extras.append("Gumbel-top-k negative sampling")
    if getattr(args, "tele_negatives", False):
        extras.append("ANCE-Tele negatives")
    if getattr(args, "cache_write_back", False):
        extras.append("cache write-back")
    if getattr(args, "candidate_index", "none") not in (None, "none"):
        extras.append(f"two-stage selection ({args.candidate_index} index)")
    if getattr(args, "corrector_warmup_steps", 0):
        extras.append(f"{args.corrector_warmup_steps} corrector warm-up steps")
    return text + (f" ({', '.join(extras)})" if extras else "")


def citations_for(args: Any, num_refreshes: int = 0) -> list[str]:
    """BibTeX entries: the corrector paper always; ANCE when a refresh was used; ANCE-Tele; Nyström."""
    out = [CITATIONS["corrector"]]
    if num_refreshes or int(getattr(args, "cache_refresh_steps", 0) or 0) > 0:
        out.append(CITATIONS["ance"])
    if getattr(args, "tele_negatives", False):
        out.append(CITATIONS["ance-tele"])
    if getattr(args, "correction", None) == "nystrom":
        out.append(CITATIONS["nystrom"])
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
    return out


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
    """``model-index`` entries for the last evaluation's ranking metrics."""
    metrics = card.final_metrics
    dataset = card.eval_dataset_name or card.train_dataset_name or "custom"
    out = []
    for name, value in metrics.items():
        if "@" not in name and name not in ("map", "stale_map", "corrected_map"):
            continue
        label = metric_label(name)
        if "(" not in label:
            label += " (fresh corpus embeddings)"
        out.append(EvalResult(task_type="text-retrieval", task_name="Retrieval", dataset_type=dataset,
                              dataset_name=dataset, metric_type=name.replace("@", "_at_"), metric_value=value,
                              metric_name=label))
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


def _tags(card: CardData, extra: list[str] | None = None) -> list[str]:
    tags = list(TAGS)
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
            "base_model_name_or_path": cfg.base_model_name_or_path}


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
    """The Hub id this retriever was initialised from: its loaded checkpoint, else its backbone (``None`` if local)."""
    cfg = retriever.config
    for name in (getattr(cfg, "name_or_path", None), getattr(cfg, "base_model_name_or_path", None)):
        if is_hub_id(name) and name != exclude:
            return name
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
    card.strategy = describe_strategy(args)
    card.hyperparameters = non_default_hyperparameters(args)
    card.num_docs = len(trainer.doc_ids)
    card.num_train_queries = len(trainer.train_examples) if trainer.train_examples is not None else None
    card.num_eval_queries = len(trainer.eval_queries) if trainer.eval_queries is not None else None
    total = trainer.total_reembedding_cost()
    card.reembedding_cost = {**trainer.cost, "total": total,
                             "corpus_passes": round(total / max(len(trainer.doc_ids), 1), 3)}
    card.global_step = int(trainer.state.global_step)
    card.epoch = trainer.state.epoch
    card.framework_versions = framework_versions()
    card.citations = citations_for(args, trainer.cost.get("num_refreshes", 0))
    return card


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
                     model_name: str | None, datasets_: list[str] | None) -> ModelCardData:
    return ModelCardData(
        library_name=LIBRARY_NAME,
        tags=tags,
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[d for d in (datasets_ or []) if is_hub_id(d)] or None,
        eval_results=eval_results_ or None,
        model_name=model_name if eval_results_ else None,
        license=card.license,
        language=card.language,
        pipeline_tag="feature-extraction",
    )


def render_retriever_card(card: CardData, repo_id: str | None = None, secrets: list[str] | None = None) -> str:
    """The retriever's README.md (YAML metadata + Markdown)."""
    repo_id = repo_id or card.repo_id
    load_id = repo_id or card.model_name or "path/to/model"
    results = eval_results(card)
    model_name = card.model_name or (repo_id or "retriever").split("/")[-1]
    datasets_ = [d for d in (card.train_dataset_name,) if d]
    data = _model_card_data(card, card.base_model, _tags(card, ["sentence-embeddings"]), results, model_name,
                            datasets_)
    rows = card.eval_rows
    columns = eval_columns(rows)
    text = ModelCard.from_template(
        data, template_path=str(template_path(RETRIEVER_TEMPLATE)),
        c=card.to_dict(), repo_id=repo_id, load_id=load_id, model_title=model_name,
        eval_columns=[(name, metric_label(name)) for name in columns], eval_rows=rows,
        has_corrector=card.corrector is not None, fmt=_fmt, cost=card.reembedding_cost,
        base_model_link=_link(card.base_model),
    ).content
    return redact(text, secrets or known_secrets())


def render_corrector_card(card: CardData, retriever_repo_id: str | None = None, repo_id: str | None = None,
                          subfolder: str | None = None, secrets: list[str] | None = None) -> str:
    """The corrector's README.md; ``base_model`` names the retriever whose cache it corrects.

    ``repo_id``/``subfolder``: where the corrector lives (its own repo, or ``corrector/`` in the retriever's).
    """
    retriever_repo_id = retriever_repo_id or card.repo_id
    load_id = repo_id or retriever_repo_id or card.model_name or "path/to/model"
    title = f"Corrector network for {retriever_repo_id or card.model_name or 'a dense retriever'}"
    data = _model_card_data(card, retriever_repo_id, _tags(card, ["corrector"]), None, None,
                            [d for d in (card.train_dataset_name,) if d])
    text = ModelCard.from_template(
        data, template_path=str(template_path(CORRECTOR_TEMPLATE)),
        c=card.to_dict(), retriever_repo_id=retriever_repo_id, load_id=load_id, subfolder=subfolder,
        model_title=title, fmt=_fmt, retriever_link=_link(retriever_repo_id),
    ).content
    return redact(text, secrets or known_secrets())


def _link(repo_id: str | None) -> str | None:
    if not repo_id:
        return None
    return f"[`{repo_id}`](https://huggingface.co/{repo_id})" if is_hub_id(repo_id) else f"`{repo_id}`"


__all__ = [
    "CITATIONS",
    "CardData",
    "LIBRARY_NAME",
    "TAGS",
    "card_data_from_trainer",
    "citations_for",
    "describe_strategy",
    "eval_results",
    "eval_rows_from_history",
    "is_hub_id",
    "non_default_hyperparameters",
    "redact",
    "render_corrector_card",
    "render_retriever_card",
    "template_path",
]
