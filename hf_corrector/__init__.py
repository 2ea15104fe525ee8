"""hf-corrector: train dense retrievers with target corrector networks, inside ``transformers.Trainer``.

Importing the package registers :class:`CorrectorModel` and :class:`RetrieverModel` with ``AutoConfig`` /
``AutoModel``, so ``AutoModel.from_pretrained`` loads them without ``trust_remote_code``.
"""

from __future__ import annotations

from ._version import __version__

from .errors import (
    CacheCorruptError,
    CacheMismatchError,
    ConfigError,
    DataFormatError,
    HFCorrectorError,
    NonFiniteError,
)
from .cache import StaleCache
from .data.format import RetrievalData
from .models import CorrectorConfig, CorrectorModel, RetrieverConfig, RetrieverModel, load_retriever
from .training import CorrectorTrainer, CorrectorTrainingArguments
from .serving import CorrectedIndex, build_corrected_index
from . import hub as _hub  # noqa: F401,E402  registers the cache card renderer until the cache split moves the push to hub/

__all__ = [
    "__version__",
    "CorrectorConfig",
    "CorrectorModel",
    "RetrieverConfig",
    "RetrieverModel",
    "load_retriever",
    "StaleCache",
    "RetrievalData",
    "CorrectorTrainer",
    "CorrectorTrainingArguments",
    "CorrectedIndex",
    "build_corrected_index",
    "HFCorrectorError",
    "DataFormatError",
    "CacheMismatchError",
    "CacheCorruptError",
    "ConfigError",
    "NonFiniteError",
]
