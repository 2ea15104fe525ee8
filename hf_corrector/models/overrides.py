"""Settings of a saved retriever changed (or refused) at load, the same way for ``RetrieverModel.from_pretrained``
and :func:`~hf_corrector.load_retriever`: nothing passed is dropped or half applied.

* :func:`pop_overrides` takes ``pooling``, ``normalize``, the two max lengths, ``softmax_temperature`` and
  ``shared_towers`` out of ``from_pretrained``'s keyword arguments (transformers would otherwise write them into
  the config: ``shared_towers=False`` then builds a new, randomly initialised query tower) and checks them;
* :func:`apply_overrides` applies them to the loaded retriever (logged) or refuses them (towers cannot be split or
  merged; a max length above the encoder's position embeddings);
* :func:`honour_sentence_transformers_settings`: a saved retriever whose sentence-transformers files were saved
  over it by sentence-transformers (new max lengths, prompts) encodes as ``SentenceTransformer(folder)`` does.

Example:
    >>> check_encoding_overrides({"softmax_temperature": -1})
    Traceback (most recent call last):
    ...
    hf_corrector.errors.ConfigError: softmax_temperature must be > 0 (a finite number; 0.05 is usual), got -1
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import TYPE_CHECKING, Any

from transformers import PreTrainedConfig

from ..errors import ConfigError
from .hub_files import model_file, read_sentence_transformers_settings
from .pooling import POOLING_MODES

if TYPE_CHECKING:
    from .retriever import RetrieverModel

logger = logging.getLogger(__name__)

#: settings of a saved retriever that ``load_retriever`` / ``from_pretrained`` override when given (None = as saved)
OVERRIDABLE = ("pooling", "normalize", "query_max_length", "target_max_length", "softmax_temperature")
#: model types whose position ids start after the padding index (RoBERTa-style): usable length = positions - pad - 1
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "mpnet", "longformer", "data2vec-text")


def check_temperature(value: Any) -> None:
    """A softmax temperature must be a finite real number > 0 (a negative one flips the loss)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"softmax_temperature must be > 0 (a finite number; 0.05 is usual), got {value!r}")


def check_encoding_overrides(overrides: dict) -> None:
    """Refuse a pooling mode, normalisation flag, maximum length or temperature that an encoder cannot take."""
    if "pooling" in overrides and overrides["pooling"] not in POOLING_MODES:
        raise ConfigError(f"pooling must be one of {list(POOLING_MODES)}, got {overrides['pooling']!r}")
    if "normalize" in overrides and not isinstance(overrides["normalize"], bool):
        raise ConfigError(f"normalize must be True or False, got {overrides['normalize']!r}")
    for key in ("query_max_length", "target_max_length"):
        value = overrides.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{key} must be a positive integer, got {value!r}")
    if overrides.get("softmax_temperature") is not None:
        check_temperature(overrides["softmax_temperature"])


def check_position_limit(encoder_config: Any, lengths: dict, name_or_path: Any) -> None:
    """Refuse a max length longer than the encoder has position embeddings for (encoding a long text would fail
    with a tensor-size error, or read past the trained positions); no-op when the encoder does not say."""
    cfg = encoder_config.to_dict() if isinstance(encoder_config, PreTrainedConfig) else dict(encoder_config or {})
    limit = cfg.get("max_position_embeddings")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        return
    if cfg.get("model_type") in _OFFSET_POSITIONS and isinstance(cfg.get("pad_token_id"), int):
        limit -= cfg["pad_token_id"] + 1
    for key in ("query_max_length", "target_max_length"):
        value = lengths.get(key)
        if isinstance(value, int) and value > limit:
            raise ConfigError(f"{key}={value}: the encoder of {name_or_path} has position embeddings for {limit} "
                              f"tokens (max_position_embeddings={cfg['max_position_embeddings']}); pass at most "
                              f"{key}={limit}")


def pop_overrides(kwargs: dict, name_or_path: Any) -> tuple[dict, bool | None]:
    """Take the retriever settings out of ``from_pretrained`` keyword arguments and check them: ``(overrides,
    shared_towers)``; ``None`` values mean "as saved". A layer count is refused (a saved retriever keeps its layers)."""
    overrides = {k: kwargs.pop(k) for k in OVERRIDABLE if k in kwargs}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    shared = kwargs.pop("shared_towers", None)
    if shared is not None and not isinstance(shared, bool):
        raise ConfigError(f"shared_towers must be True or False, got {shared!r}")
    layers = kwargs.pop("num_hidden_layers", None)
    if layers is not None:
        raise ConfigError(f"num_hidden_layers={layers!r}: {name_or_path} is a saved retriever, loaded with all its "
                          f"trained layers; cut the layers of the backbone before training "
                          f"(load_retriever(backbone, num_hidden_layers=N)), not of a trained retriever")
    check_encoding_overrides(overrides)
    return overrides, shared


def apply_overrides(model: RetrieverModel, name_or_path: Any, overrides: dict, shared: bool | None) -> RetrieverModel:
    """``model`` with ``overrides`` set in its config (each change logged), or a :class:`ConfigError` for a tower
    layout other than the saved one or a max length the encoder cannot take."""
    if shared is not None and shared != bool(model.config.shared_towers):
        raise ConfigError(f"shared_towers={shared}: {name_or_path} was saved with shared_towers="
                          f"{model.config.shared_towers}, and its towers cannot be split or merged at load (leave "
                          f"shared_towers out to load it as saved)")
    check_position_limit(model.config.encoder_config, overrides, name_or_path)
    for key, value in overrides.items():
        if getattr(model.config, key) != value:
            logger.warning("%s: %s=%r overrides the saved %r (embeddings change accordingly)", name_or_path, key,
                           value, getattr(model.config, key))
            setattr(model.config, key, float(value) if key == "softmax_temperature" else value)
    return model


def stated_encoding(st: dict) -> dict:
    """The retriever settings that sentence-transformers settings (from ``read_sentence_transformers_settings``)
    state explicitly, as :meth:`RetrieverModel.from_backbone` reads them."""
    out: dict[str, Any] = {"normalize": bool(st.get("normalize", False)),
                           "query_prefix": st.get("query_prefix", ""), "target_prefix": st.get("target_prefix", "")}
    if "pooling" in st:
        out["pooling"] = st["pooling"]
    if st.get("query_length"):
        out["query_max_length"] = int(st["query_length"])
    if st.get("document_length") or st.get("max_seq_length"):
        out["target_max_length"] = int(st.get("document_length") or st["max_seq_length"])
    return out


def honour_sentence_transformers_settings(model: RetrieverModel, folder: str, hub_kwargs: dict) -> RetrieverModel:
    """A saved retriever whose sentence-transformers files state other settings than its ``config.json`` (saved over
    it by ``SentenceTransformer.save`` after changing ``max_seq_length`` or ``prompts``; with two towers the root
    config is left as it was) takes those settings, with a warning, so it encodes as ``SentenceTransformer(folder)``."""
    st = read_sentence_transformers_settings(folder, **hub_kwargs)
    if not st:
        return model
    changed = {k: v for k, v in stated_encoding(st).items() if getattr(model.config, k) != v}
    if changed:
        logger.warning("%s: its sentence-transformers files (saved over the retriever, e.g. by SentenceTransformer."
                       "save) state %s, not the retriever config's %s: using them, as SentenceTransformer(folder) "
                       "does", folder, changed, {k: getattr(model.config, k) for k in changed})
        for key, value in changed.items():
            setattr(model.config, key, value)
    return model


def saved_model_type(name_or_path: str, hub_kwargs: dict) -> str | None:
    """``model_type`` of the saved ``config.json`` (``None`` when there is none to read)."""
    try:
        cfg, _ = PreTrainedConfig.get_config_dict(name_or_path, **hub_kwargs)
    except (OSError, ValueError):
        return None
    return cfg.get("model_type")


def load_foreign_folder(cls: type[RetrieverModel], name_or_path: str, model_type: str, hub_kwargs: dict,
                        overrides: dict, shared: bool | None) -> RetrieverModel:
    """A folder whose root ``config.json`` is not a retriever's: a sentence-transformers model (for instance one
    that ``SentenceTransformer(...).save`` wrote back over a saved retriever) is read with :meth:`from_backbone`,
    which takes its pooling, normalisation, lengths and prompts (and the overrides); anything else is refused
    naming what to call."""
    if model_file(name_or_path, "modules.json", **hub_kwargs) is None:
        raise ConfigError(f"{name_or_path} holds a plain {model_type!r} model, not a saved retriever; wrap it with "
                          f"RetrieverModel.from_backbone({str(name_or_path)!r}) (or load_retriever) to train it")
    logger.warning("%s is a sentence-transformers model (root config.json: %s; saved by "
                   "sentence-transformers, maybe over a retriever): loading it with RetrieverModel.from_backbone "
                   "(pooling, normalisation, lengths and prompts from its modules; softmax_temperature and tower "
                   "sharing take their defaults; a corrector/ folder is loaded separately)", name_or_path, model_type)
    return cls.from_backbone(name_or_path, shared_towers=shared, **overrides, **hub_kwargs)


__all__ = ["OVERRIDABLE", "apply_overrides", "check_encoding_overrides", "check_position_limit",
           "check_temperature", "honour_sentence_transformers_settings", "pop_overrides"]
