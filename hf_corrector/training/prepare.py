"""Preparing the parts a :class:`~hf_corrector.CorrectorTrainer` trains with: the retriever (from a model or a path,
with its tokenizer checked), the corrector (loaded, given or built from the strategy), the stale cache (loaded,
given, built, or taken from the checkpoint to resume) and this process's rows of a sharded cache.

Plain functions of narrow arguments (no trainer): the trainer's ``__init__`` calls them once.

Example:
    >>> retriever = prepare_retriever("path/to/retriever", None)  # doctest: +SKIP
    >>> cache = prepare_cache(None, retriever, corpus, args, StaleCache)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets

from ..cache import StaleCache
from ..cache.rank_build import build_rows
from ..cache.sharded_store import check_part_provenance
from ..cache.sharding import row_range
from ..errors import CacheMismatchError, ConfigError
from ..utils.arrow_column import ArrowColumn
from ..utils.hub_ids import public_model_id
from ..models.corrector import CorrectorConfig, CorrectorModel
from ..models.loading import load_retriever
from ..models.retriever import RetrieverModel
from .checkpoints import last_complete_checkpoint
from .peft_utils import apply_peft
from .persistence import CACHE_DIR
from .strategy import NegativeStrategy
from .user_optim import is_peft

logger = logging.getLogger(__name__)


def prepare_corrector(corrector, retriever: RetrieverModel, args, strategy: NegativeStrategy, corrector_class
                       ) -> CorrectorModel | None:
    """The corrector to train: loaded, given, or built from the arguments (None when no corrector trains)."""
    if isinstance(corrector, (str, os.PathLike)):
        corrector = corrector_class.from_pretrained(corrector)
    trains_corrector = strategy.trains_corrector
    if strategy.uses_corrector and not trains_corrector:
        logger.info("num_negatives=0 (in-batch negatives only): no corrector is trained")
    if corrector is None and trains_corrector:
        corrector = corrector_class(CorrectorConfig(
            embedding_dim=retriever.embedding_dim, architecture=strategy.correction, hidden_dim=args.corrector_hidden_dim,
            num_layers=args.corrector_num_layers,
            retriever_name_or_path=public_model_id(retriever.config.base_model_name_or_path)))
    if corrector is not None and corrector.config.embedding_dim != retriever.embedding_dim:
        raise CacheMismatchError(f"corrector dimension {corrector.config.embedding_dim} != retriever dimension "
                                 f"{retriever.embedding_dim}")
    return corrector if trains_corrector else None


def local_rows(accelerator, num_rows: int, sharding: str) -> tuple[int, int] | None:
    """This process's rows of a cache sharded across processes (None: it holds every row)."""
    world = int(accelerator.num_processes)
    return row_range(num_rows, world, int(accelerator.process_index)) if sharding == "sharded" and world > 1 else None


def prepare_cache(cache, retriever: RetrieverModel, corpus: datasets.Dataset, args, cache_class,
                   from_checkpoint: bool = False, rows: tuple[int, int] | None = None, accelerator=None) -> StaleCache:
    """The stale cache: loaded from a path, given, or built with the starting model (at ``target_max_length``).

    ``rows``: this process's rows of a sharded run; a sharded cache folder is then read for those rows only.
    A cache must belong to this corpus (ids and texts) and, unless ``cache_from_other_weights`` says on purpose that
    it is an older encoder's cache to correct, to this target encoder. A checkpoint's cache was written by earlier
    weights of this run by design: only its corpus is checked.
    """
    if isinstance(cache, (str, os.PathLike)):
        if rows is not None:  # this process's rows only, of a sharded or a single-file folder (sharded_store.py)
            part = cache_class.load(cache, rows=rows)
            check_part_provenance(part, cache, ArrowColumn.from_dataset(corpus, "doc_id"),
                                  ArrowColumn.from_dataset(corpus, "text"),
                                  None if from_checkpoint else retriever,
                                  allow_other_weights=args.cache_from_other_weights, max_length=args.target_max_length)
            if from_checkpoint:
                part.check_model(retriever)
            return part
        cache = cache_class.load(cache)
    if cache is None and rows is not None:  # this process encodes and holds only its rows (cache/rank_build.py)
        logger.info("building this process's rows %d:%d of the stale cache with the starting model", *rows)
        return build_rows(corpus, retriever, rows, batch_size=args.cache_encode_batch_size, dtype=args.cache_dtype,
                          device=args.device, max_length=args.target_max_length, shard_dir=args.cache_build_dir,
                          show_progress_bar=accelerator.is_main_process, accelerator=accelerator)
    if cache is None:
        logger.info("building the stale cache: encoding %d documents with the starting model", len(corpus))
        return cache_class.build(corpus, retriever, batch_size=args.cache_encode_batch_size, dtype=args.cache_dtype,
                                 device=args.device, max_length=args.target_max_length, shard_dir=args.cache_build_dir)
    cache.check_provenance(None if from_checkpoint else retriever, doc_ids=ArrowColumn.from_dataset(corpus, "doc_id"),
                           texts=ArrowColumn.from_dataset(corpus, "text"), allow_other_weights=args.cache_from_other_weights,
                           max_length=args.target_max_length)
    if from_checkpoint:
        cache.check_model(retriever)  # dimension, pooling, normalisation
    return cache


def means_true(value) -> bool:
    """``True`` or the string ``"true"`` (as ``--resume_from_checkpoint true`` arrives from the command line)."""
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def checkpoint_cache(output_dir: str, resume_from_checkpoint: str | bool) -> str | None:
    """The ``stale_cache`` folder of the checkpoint a run will resume from (None when there is none yet)."""
    folder = last_complete_checkpoint(output_dir) if means_true(resume_from_checkpoint) else resume_from_checkpoint
    path = Path(folder) / CACHE_DIR if folder else None
    return str(path) if path is not None and path.is_dir() else None


def prepare_retriever(model, processing_class, peft_config) -> RetrieverModel:
    """The retriever from a model or path, with ``processing_class`` as its tokenizer and PEFT applied."""
    if model is None:
        raise ConfigError("CorrectorTrainer needs a model (a RetrieverModel or a path / Hub id)")
    retriever = load_retriever(model) if isinstance(model, (str, os.PathLike)) else model
    if is_peft(retriever):  # get_peft_model(retriever, ...): its save / reload would not be a retriever's
        raise ConfigError("model is a PeftModel around the retriever (get_peft_model(retriever, ...)); wrap its "
                          "encoder instead (retriever.encoder = get_peft_model(retriever.encoder, config), and "
                          "retriever.query_encoder too with two towers) or pass the plain retriever with "
                          "peft_config=config to CorrectorTrainer")
    if not isinstance(retriever, RetrieverModel):
        raise ConfigError(f"model must be a RetrieverModel or a path, got {type(retriever).__name__}"
                          f"{_how_to_pass(retriever)}")
    if processing_class is not None:
        retriever.tokenizer = processing_class
    if retriever.tokenizer is None:
        raise ConfigError("the retriever has no tokenizer; pass processing_class=AutoTokenizer.from_pretrained(...)")
    check_tokenizer_fits(retriever)
    return apply_peft(retriever, peft_config) if peft_config is not None else retriever


def record_run_preprocessing(retriever: RetrieverModel, args: Any, data_collator: Any = None) -> None:
    """Write the query / target preprocessing this run trains and evaluates with into ``retriever.config``, so that
    the saved model (``from_pretrained``, ``SentenceTransformer``, the served index) encodes as training did:
    ``args.query_max_length`` / ``args.target_max_length`` when set, and a collator's own ``query_max_length`` /
    ``query_prefix``. Each change is logged.

    Example:
        >>> record_run_preprocessing(retriever, CorrectorTrainingArguments("out", query_max_length=32))  # doctest: +SKIP
    """
    config = retriever.config
    wanted = {"query_max_length": (args.query_max_length, "query_max_length"),
              "target_max_length": (args.target_max_length, "target_max_length")}
    if data_collator is not None:  # a collator of the user's: its settings are what the batches hold
        for key in ("query_max_length", "query_prefix"):
            if getattr(data_collator, key, None) is not None:
                wanted[key] = (getattr(data_collator, key), f"data_collator.{key}")
    for key, (value, source) in wanted.items():
        if value is not None and getattr(config, key) != value:
            logger.info("the retriever's config.%s %r -> %r (%s): the saved model encodes as this run trains",
                        key, getattr(config, key), value, source)
            setattr(config, key, value)


def _how_to_pass(model: Any) -> str:
    """What to pass instead of a sentence-transformers or plain transformers model object (empty for others)."""
    if type(model).__name__ == "SentenceTransformer":
        first = next(iter(model), None) if hasattr(model, "__iter__") else None
        folder = getattr(getattr(first, "auto_model", None), "name_or_path", None)
        where = f"model={folder!r}" if folder else "model=<the folder or Hub id it was loaded from>"
        return (f": pass the folder it was loaded from, {where} (RetrieverModel.from_pretrained reads "
                f"sentence-transformers folders, pooling and normalisation included); if it was changed in memory, "
                f"model.save_pretrained(folder) first and pass that folder")
    folder = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if folder:
        return (f": wrap the backbone, model=RetrieverModel.from_backbone({folder!r}) (choose pooling= and "
                f"normalize=), or pass a retriever folder")
    return ""


def check_tokenizer_fits(retriever: RetrieverModel) -> None:
    """A tokenizer with more tokens than the encoder's embedding matrix would fail deep in torch: fail early."""
    size = len(retriever.tokenizer)
    for name in ("encoder", "query_encoder"):
        tower = getattr(retriever, name, None)
        try:
            rows = getattr(tower.get_input_embeddings(), "num_embeddings", None) if tower is not None else None
        except (AttributeError, NotImplementedError):
            rows = None
        if rows is not None and size > rows:
            raise ConfigError(f"the tokenizer has {size} tokens but the retriever's {name} embeds only {rows} token ids "
                              f"(a tokenizer of another model?); use the encoder's own tokenizer or resize its embeddings")
