"""Write a :class:`~hf_corrector.RetrieverModel` as a sentence-transformers model.

:meth:`RetrieverModel.save_pretrained` (so also ``trainer.save_model`` and every push) writes this layout next to
its own files, which makes every saved or published retriever a sentence-transformers model:
``SentenceTransformer(folder_or_repo)`` loads it **without hf-corrector installed**, and
``RetrieverModel.from_pretrained`` / ``AutoModel.from_pretrained`` (after ``import hf_corrector``) keep reading
the root ``config.json`` / ``model.safetensors``. The ``Transformer`` module therefore lives in a subfolder (the
root ``config.json`` is the retriever's), which costs a second copy of the encoder weights::

    config.json, model.safetensors, tokenizer files   RetrieverModel (hf-corrector)
    modules.json, config_sentence_transformers.json   module list; prompts (query / document prefixes), similarity
    0_Transformer/                                    the backbone, its tokenizer, sentence_bert_config.json
    1_Pooling/config.json                             mean | cls | last-token pooling
    2_Normalize/                                      only when the retriever L2-normalises
    corrector/                                        the corrector network (hf-corrector only)

A retriever with **separate towers** is written with sentence-transformers' asymmetric ``Router`` module
(sentence-transformers >= 5.0): ``router_config.json`` at the root and ``query_0_Transformer/`` /
``document_0_Transformer/``; ``encode_query`` and ``encode_document`` then use the matching tower, each with its
own max length, and plain ``encode`` uses the document tower.

:func:`export_sentence_transformers` writes the classic standalone layout (Transformer at the root) for a folder
that only sentence-transformers has to read. sentence-transformers is not needed to write either, only to load.

Why the files are written here and not by ``SentenceTransformer.save`` (with a ``Router`` for two towers):
sentence-transformers is an optional extra (``hf-corrector[st]``), not a dependency, and every
``save_pretrained`` writes this layout, so writing must work without it; and ``SentenceTransformer.save`` puts
the first ``Transformer`` module's ``config.json`` and weights at the folder's root (``save_in_root``), where the
retriever's own ``config.json`` must stay. Loading is still sentence-transformers' own code (tested in
``tests/test_st_export.py``).

Shared towers: one ``Transformer`` module with ``max_seq_length`` = ``target_max_length`` and the per-task lengths
of sentence-transformers 6 (``query_length`` = ``query_max_length``, ``document_length``), so ``encode_query``
truncates a long query where :meth:`RetrieverModel.encode_queries` does (with an older sentence-transformers
installed at save time they are not written, with a warning).

Example:
    >>> retriever.save_pretrained("out/final")  # doctest: +SKIP
    >>> SentenceTransformer("out/final").encode_query(["a query"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.metadata
import inspect
import json
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)

ST_MIN_VERSION_WRITTEN = "2.2.0"  # the single-tower layout below is read by sentence-transformers >= 2.2
ST_ROUTER_MIN_VERSION = "5.0.0"  # Router (asymmetric towers) came with sentence-transformers 5.0
#: the Transformer module's folder inside a saved retriever (the root holds the retriever's own config.json)
TRANSFORMER_DIR = "0_Transformer"
#: module types as every sentence-transformers version resolves them (v6 maps the old paths to the new modules)
_TYPES = {name: f"sentence_transformers.models.{name}" for name in ("Transformer", "Pooling", "Normalize", "Router")}


def _version(dist: str, default: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return default


def _plain_encoder(encoder: Any) -> Any:
    """The encoder as a plain ``transformers`` model (PEFT adapters merged into a copy)."""
    if hasattr(encoder, "merge_and_unload"):
        return copy.deepcopy(encoder).merge_and_unload()
    return encoder


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def _task_lengths_supported() -> bool:
    """Whether the installed sentence-transformers' ``Transformer`` takes per-task lengths (``query_length`` /
    ``document_length``, sentence-transformers 6); older versions refuse unknown keys in ``sentence_bert_config``."""
    try:
        from sentence_transformers.base.modules import Transformer
    except ImportError:
        return False
    return "query_length" in inspect.signature(Transformer.__init__).parameters


def _write_transformer(encoder: Any, tokenizer: Any, folder: Path, max_length: int, safe_serialization: bool,
                       query_length: int | None = None) -> None:
    """A sentence-transformers ``Transformer`` module: backbone, tokenizer and ``sentence_bert_config.json``
    (with ``query_length`` / ``document_length`` when one module serves both sides and the library takes them)."""
    folder.mkdir(parents=True, exist_ok=True)
    _plain_encoder(encoder).save_pretrained(folder, safe_serialization=safe_serialization)
    tokenizer.save_pretrained(folder)
    settings: dict[str, Any] = {"max_seq_length": int(max_length), "do_lower_case": False}
    if query_length is not None and int(query_length) != int(max_length):
        if _task_lengths_supported():
            settings.update(query_length=int(query_length), document_length=int(max_length))
        else:
            logger.warning("the installed sentence-transformers has no per-task lengths: SentenceTransformer(...)."
                           "encode_query will truncate queries at %d tokens, not at query_max_length=%d (upgrade "
                           "to sentence-transformers >= 6 and save again)", max_length, query_length)
    _write_json(folder / "sentence_bert_config.json", settings)


def _check_tower(retriever: RetrieverModel, tower: str | None) -> str:
    """``"both"`` (shared towers or a Router), ``"query"`` or ``"target"`` (one tower of two exported alone)."""
    if tower not in (None, "query", "target"):
        raise ConfigError(f"tower must be 'query', 'target' or None, got {tower!r}")
    separate = retriever.query_encoder is not None and not retriever.config.shared_towers
    if not separate or tower is None:
        return "both"
    other = "query" if tower == "target" else "target"
    warnings.warn(f"exporting only the {tower} tower of a retriever with separate towers; the {other} tower is "
                  "not exported", UserWarning, stacklevel=3)
    return tower


def write_sentence_transformers_files(
    retriever: RetrieverModel,
    path: str | os.PathLike,
    tower: Literal["query", "target"] | None = None,
    transformer_dir: str = TRANSFORMER_DIR,
    safe_serialization: bool = True,
) -> Path:
    """Write the sentence-transformers modules of ``retriever`` into ``path`` (see the module docstring).

    Args:
        retriever: a :class:`RetrieverModel` with a tokenizer.
        path: the folder (created); files of the same names are overwritten, nothing else is touched.
        tower: for separate towers, export only ``"query"`` or ``"target"`` as a plain single-encoder model (with a
            warning); ``None`` writes both towers behind a ``Router``. Ignored for shared towers.
        transformer_dir: folder of the single ``Transformer`` module (``""``: the root, for a standalone export).
        safe_serialization: safetensors weights.

    Raises:
        ConfigError: no tokenizer, or an unknown ``tower``.
    """
    cfg = retriever.config
    if retriever.tokenizer is None:
        raise ConfigError("the retriever has no tokenizer to export; set `retriever.tokenizer` first")
    side = _check_tower(retriever, tower)
    router = side == "both" and retriever.query_encoder is not None and not cfg.shared_towers
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    if router:
        _write_transformer(retriever.tower("query"), retriever.tokenizer, path / "query_0_Transformer",
                           cfg.query_max_length, safe_serialization)
        _write_transformer(retriever.tower("target"), retriever.tokenizer, path / "document_0_Transformer",
                           cfg.target_max_length, safe_serialization)
        _write_json(path / "router_config.json", {
            "types": {"query_0_Transformer": _TYPES["Transformer"], "document_0_Transformer": _TYPES["Transformer"]},
            "structure": {"query": ["query_0_Transformer"], "document": ["document_0_Transformer"]},
            "parameters": {"default_route": "document", "allow_empty_key": True, "route_mappings": {}},
        })
        modules = [{"idx": 0, "name": "0", "path": "", "type": _TYPES["Router"]}]
    else:
        encoder = retriever.tower("query" if side == "query" else "target")
        max_length = cfg.query_max_length if side == "query" else cfg.target_max_length
        _write_transformer(encoder, retriever.tokenizer, path / transformer_dir if transformer_dir else path,
                           max_length, safe_serialization, query_length=cfg.query_max_length if side == "both" else None)
        modules = [{"idx": 0, "name": "0", "path": transformer_dir, "type": _TYPES["Transformer"]}]

    (path / "1_Pooling").mkdir(exist_ok=True)
    _write_json(path / "1_Pooling" / "config.json", {
        "word_embedding_dimension": retriever.embedding_dim,
        "pooling_mode_cls_token": cfg.pooling == "cls",
        "pooling_mode_mean_tokens": cfg.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": cfg.pooling == "last",
        "include_prompt": True,  # a prefix is part of the text, as in RetrieverModel.tokenize
    })
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _TYPES["Pooling"]})
    if cfg.normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _TYPES["Normalize"]})
    _write_json(path / "modules.json", modules)

    prompts = {}
    if side in ("both", "query"):
        prompts["query"] = cfg.query_prefix or ""
    if side in ("both", "target"):
        prompts["document"] = cfg.target_prefix or ""
    written_by = _version("sentence-transformers", ST_ROUTER_MIN_VERSION if router else ST_MIN_VERSION_WRITTEN)
    _write_json(path / "config_sentence_transformers.json", {
        "__version__": {"sentence_transformers": written_by, "transformers": _version("transformers", "unknown"),
                        "pytorch": _version("torch", "unknown")},
        "model_type": "SentenceTransformer",
        "prompts": prompts,
        # plain encode() is encode_document(), as it is encode_targets() here (it also takes the document route)
        "default_prompt_name": "document" if prompts.get("document") else None,
        "similarity_fn_name": "cosine" if cfg.normalize else "dot",
    })
    logger.debug("wrote the sentence-transformers modules of the retriever into %s", path)
    return path


def modules_changed_since_save(retriever: RetrieverModel, folder: str | os.PathLike) -> list[str]:
    """The ``Transformer`` module folders of a saved retriever's sentence-transformers layout whose weights differ
    from the retriever's towers: written after the retriever was (``SentenceTransformer(folder).save(folder)``
    after training it with sentence-transformers rewrites the modules and leaves the root weights as they were).
    Local folders only; ``[]`` when the layout is absent or agrees.

    Example:
        >>> modules_changed_since_save(RetrieverModel.from_pretrained("out"), "out")  # doctest: +SKIP
        ['query_0_Transformer', 'document_0_Transformer']
    """
    from safetensors import safe_open

    folder = Path(folder)
    towers = {TRANSFORMER_DIR: "target", "query_0_Transformer": "query", "document_0_Transformer": "target"}
    changed = []
    for module, side in towers.items():
        weights = folder / module / "model.safetensors"
        if not weights.is_file() or (side == "query" and retriever.query_encoder is None):
            continue
        state = retriever.tower(side).state_dict()
        with safe_open(str(weights), "pt") as saved:
            if set(saved.keys()) != set(state):  # another layout (a quantised load, say): nothing to compare
                continue
            # cast as the load did (torch_dtype=...), so only other values count
            if any(not saved.get_tensor(k).to(state[k].dtype).equal(state[k].detach().cpu()) for k in state):
                changed.append(module)
    return changed


def newer_modules_or(retriever: RetrieverModel, folder: str | os.PathLike) -> RetrieverModel:
    """``retriever`` as loaded from ``folder``, or, when its sentence-transformers modules were saved over it
    (:func:`modules_changed_since_save`), the retriever read from those modules (what ``SentenceTransformer(folder)``
    encodes with), with a warning; the softmax temperature is kept."""
    changed = modules_changed_since_save(retriever, folder)
    if not changed:
        return retriever
    logger.warning("%s: the sentence-transformers module(s) %s hold other weights than the retriever's "
                   "model.safetensors (saved over it by sentence-transformers): loading the modules, which "
                   "SentenceTransformer(folder) encodes with", folder, changed)
    return type(retriever).from_backbone(folder, softmax_temperature=retriever.config.softmax_temperature)


def export_sentence_transformers(
    retriever: RetrieverModel,
    path: str | os.PathLike,
    tower: Literal["query", "target"] | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write ``retriever`` as a standalone sentence-transformers folder (Transformer at the root); return the path.

    A retriever saved with ``save_pretrained`` already loads with ``SentenceTransformer``; use this for a folder
    without the hf-corrector files. Separate towers are written behind a ``Router`` unless ``tower`` picks one.

    Example:
        >>> export_sentence_transformers(retriever, "st-model")  # doctest: +SKIP
        >>> SentenceTransformer("st-model").encode(["a document"])  # doctest: +SKIP
    """
    return write_sentence_transformers_files(retriever, path, tower=tower, transformer_dir="",
                                             safe_serialization=safe_serialization)


__all__ = ["TRANSFORMER_DIR", "export_sentence_transformers", "modules_changed_since_save",
           "newer_modules_or", "write_sentence_transformers_files"]
