"""hf-corrector: train dense retrievers with target corrector networks, inside ``transformers.Trainer``.

Importing the package registers :class:`CorrectorModel` and :class:`RetrieverModel` with ``AutoConfig`` /
``AutoModel``, so ``AutoModel.from_pretrained`` loads them without ``trust_remote_code``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    CacheCorruptError,
    CacheMismatchError,
    ConfigError,
    DataFormatError,
    HFCorrectorError,
    NonFiniteError,
)
from .models import CorrectorConfig, CorrectorModel, RetrieverConfig, RetrieverModel, load_retriever

__all__ = [
    "__version__",
    "CorrectorConfig",
    "CorrectorModel",
    "RetrieverConfig",
    "RetrieverModel",
    "load_retriever",
    "HFCorrectorError",
    "DataFormatError",
    "CacheMismatchError",
    "CacheCorruptError",
    "ConfigError",
    "NonFiniteError",
]
