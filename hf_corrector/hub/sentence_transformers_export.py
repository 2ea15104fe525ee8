"""Export a :class:`~hf_corrector.RetrieverModel` as a sentence-transformers model folder.

The folder has the classic layout every sentence-transformers version loads::

    config.json, model.safetensors, tokenizer files   the backbone (module 0: Transformer), saved at the root
    sentence_bert_config.json                         max_seq_length
    1_Pooling/config.json                             mean | cls | last-token pooling
    2_Normalize/                                      only when the retriever L2-normalises
    modules.json, config_sentence_transformers.json   module list; prompts (query / document prefixes), similarity

``SentenceTransformer(path).encode(texts)`` then returns ``retriever.encode_targets(texts)``, and with prefixes
``encode_query`` / ``encode_document`` (prompts ``query`` / ``document``) match ``encode_queries`` /
``encode_targets``. sentence-transformers is not needed to export, only to load.

Caveats:
    * A SentenceTransformer has one encoder: a retriever with separate towers raises unless ``tower`` picks one.
    * One ``max_seq_length`` for both sides: the exported side's max length (documents by default). Queries longer
      than that are truncated differently than by ``encode_queries`` (which uses ``query_max_length``).

Example:
    >>> from hf_corrector.hub import export_sentence_transformers  # doctest: +SKIP
    >>> export_sentence_transformers(retriever, "st-model")  # doctest: +SKIP
    >>> SentenceTransformer("st-model").encode(["a document"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

ST_MIN_VERSION_WRITTEN = "2.2.0"  # the layout below is read by sentence-transformers >= 2.2


def _version(dist: str, default: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return default


def _plain_encoder(encoder):
    """The encoder as a plain ``transformers`` model (PEFT adapters merged into a copy)."""
    if hasattr(encoder, "merge_and_unload"):
        return copy.deepcopy(encoder).merge_and_unload()
    return encoder


def export_sentence_transformers(
    retriever: RetrieverModel,
    path: str | os.PathLike,
    tower: Literal["query", "target"] | None = None,
    safe_serialization: bool = True,
) -> Path:
    """Write ``retriever`` as a sentence-transformers folder at ``path`` and return the path.

    Args:
        retriever: a :class:`RetrieverModel` with a tokenizer.
        path: the output folder (created; existing files of the same names are overwritten).
        tower: for a retriever with separate towers, ``"target"`` (documents) or ``"query"`` exports that encoder
            (with a warning: the other side is lost); ignored for shared towers.
        safe_serialization: save weights as safetensors.

    Raises:
        ConfigError: separate towers without ``tower``, no tokenizer, or an unknown ``tower``.
    """
    cfg = retriever.config
    if retriever.tokenizer is None:
        raise ConfigError("the retriever has no tokenizer to export; set `retriever.tokenizer` first")
    if tower not in (None, "query", "target"):
        raise ConfigError(f"tower must be 'query', 'target' or None, got {tower!r}")
    separate = retriever.query_encoder is not None and not cfg.shared_towers
    if separate and tower is None:
        raise ConfigError(
            "this retriever has separate query and document towers, but a SentenceTransformer has a single encoder. "
            "Pass tower='target' to export the document encoder (or tower='query' for the query encoder); the other "
            "tower is not exported."
        )
    if separate:
        other = "query" if tower == "target" else "target"
        warnings.warn(f"exporting only the {tower} tower of a retriever with separate towers; the {other} tower is "
                      "not exported", UserWarning, stacklevel=2)
        side = tower
    else:
        side = "both"
    encoder = _plain_encoder(retriever.tower("query" if side == "query" else "target"))

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(path, safe_serialization=safe_serialization)
    retriever.tokenizer.save_pretrained(path)

    max_length = cfg.query_max_length if side == "query" else cfg.target_max_length
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": int(max_length),
                                                                "do_lower_case": False}, indent=2))
    pooling_dir = path / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    (pooling_dir / "config.json").write_text(json.dumps({
        "word_embedding_dimension": retriever.embedding_dim,
        "pooling_mode_cls_token": cfg.pooling == "cls",
        "pooling_mode_mean_tokens": cfg.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": cfg.pooling == "last",
        "include_prompt": True,  # a prefix is part of the text, as in RetrieverModel.tokenize
    }, indent=2))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if cfg.normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2))

    prompts = {}
    if side in ("both", "query") and cfg.query_prefix:
        prompts["query"] = cfg.query_prefix
    if side in ("both", "target") and cfg.target_prefix:
        prompts["document"] = cfg.target_prefix
    st_config = {
        "__version__": {"sentence_transformers": _version("sentence-transformers", ST_MIN_VERSION_WRITTEN),
                        "transformers": _version("transformers", "unknown"), "pytorch": _version("torch", "unknown")},
        "prompts": prompts,
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if cfg.normalize else "dot",
    }
    (path / "config_sentence_transformers.json").write_text(json.dumps(st_config, indent=2))
    return path


__all__ = ["export_sentence_transformers"]
