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
from .overrides import OVERRIDABLE
from .retriever import RetrieverConfig, RetrieverModel

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


def _saved_with_overrides(name_or_path: str, kwargs: dict) -> RetrieverModel:
    """A saved retriever with the given settings applied (logged when they change it), or a :class:`ConfigError`
    for those a saved retriever cannot take (a layer count, tower sharing): nothing is dropped silently. The
    settings are applied by :meth:`RetrieverModel.from_pretrained` (:mod:`hf_corrector.models.overrides`)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    taken = {k: kwargs.pop(k) for k in (*OVERRIDABLE, *HUB_KWARGS, "shared_towers", "num_hidden_layers") if k in kwargs}
    if kwargs:
        raise ConfigError(f"load_retriever({name_or_path!r}): {sorted(kwargs)} cannot be applied to a saved retriever "
                          f"(it takes {list(OVERRIDABLE)} and {list(HUB_KWARGS)})")
    return RetrieverModel.from_pretrained(name_or_path, **taken)
