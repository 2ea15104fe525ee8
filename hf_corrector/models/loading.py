"""Loading a retriever from any folder or Hub id: a saved :class:`RetrieverModel` with its settings overridden
(or refused) as asked, anything else wrapped with :meth:`RetrieverModel.from_backbone`.

Example:
    >>> from hf_corrector import load_retriever
    >>> load_retriever("out/final", normalize=True)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from transformers import AutoConfig

from ..errors import ConfigError
from .hub_files import HUB_KWARGS, check_local_folder
from .retriever import RetrieverConfig, RetrieverModel, check_encoding_overrides

logger = logging.getLogger(__name__)


def load_retriever(name_or_path: str | os.PathLike, **kwargs) -> RetrieverModel:
    """Load a saved :class:`RetrieverModel`, or wrap any other backbone with :meth:`RetrieverModel.from_backbone`.

    A path that looks local and does not exist raises ``FileNotFoundError("no such folder: ...")`` at once.

    Example:
        >>> load_retriever("sentence-transformers/all-MiniLM-L6-v2").config.normalize  # doctest: +SKIP
        True
    """
    name_or_path = check_local_folder(name_or_path)
    cfg_file = Path(name_or_path) / "config.json"
    if cfg_file.is_file():
        is_retriever = json.loads(cfg_file.read_text()).get("model_type") == RetrieverConfig.model_type
    else:
        try:
            is_retriever = AutoConfig.from_pretrained(name_or_path).model_type == RetrieverConfig.model_type
        except (OSError, ValueError):
            is_retriever = False
    if is_retriever:
        return _saved_with_overrides(name_or_path, kwargs)
    return RetrieverModel.from_backbone(name_or_path, **kwargs)


#: settings of a saved retriever that ``load_retriever`` overrides when given (None = keep the saved value)
OVERRIDABLE = ("pooling", "normalize", "query_max_length", "target_max_length", "softmax_temperature")


def _saved_with_overrides(name_or_path: str, kwargs: dict) -> RetrieverModel:
    """A saved retriever with the given settings applied (logged when they change it), or a :class:`ConfigError`
    for those a saved retriever cannot take (a layer count, tower sharing): nothing is dropped silently."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    overrides = {k: kwargs.pop(k) for k in OVERRIDABLE if k in kwargs}
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs}
    shared = kwargs.pop("shared_towers", None)
    if "num_hidden_layers" in kwargs:
        raise ConfigError(f"num_hidden_layers={kwargs['num_hidden_layers']!r}: {name_or_path} is a saved retriever, "
                          f"loaded with all its trained layers; cut the layers of the backbone before training "
                          f"(load_retriever(backbone, num_hidden_layers=N)), not of a trained retriever")
    if kwargs:
        raise ConfigError(f"load_retriever({name_or_path!r}): {sorted(kwargs)} cannot be applied to a saved retriever "
                          f"(it takes {list(OVERRIDABLE)} and {list(HUB_KWARGS)})")
    model = RetrieverModel.from_pretrained(name_or_path, **hub)
    if shared is not None and bool(shared) != bool(model.config.shared_towers):
        raise ConfigError(f"shared_towers={shared}: {name_or_path} was saved with shared_towers="
                          f"{model.config.shared_towers}, and its towers cannot be split or merged at load")
    check_encoding_overrides(overrides)
    for key, value in overrides.items():
        if getattr(model.config, key) != value:
            logger.warning("%s: %s=%r overrides the saved %r (embeddings change accordingly)", name_or_path, key,
                           value, getattr(model.config, key))
            setattr(model.config, key, value)
    return model
