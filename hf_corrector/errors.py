"""The library's own exception types.

Every error that comes from bad user input is a subclass of :class:`HFCorrectorError`, so callers can catch
one type. Messages name the offending thing (file and line, id, dimension).

Example:
    >>> from hf_corrector.errors import DataFormatError
    >>> try:
    ...     raise DataFormatError("corpus.jsonl:3: not valid JSON")
    ... except HFCorrectorError as err:
    ...     print(err)
    corpus.jsonl:3: not valid JSON
"""

from __future__ import annotations


class HFCorrectorError(Exception):
    """Base class of every error raised by hf_corrector for bad input or bad state."""


class DataFormatError(HFCorrectorError, ValueError):
    """A data file or dataset row is malformed (names the file and line, or the row id)."""


class CacheMismatchError(HFCorrectorError, ValueError):
    """A stale cache does not fit the corpus, the corrector or the model (names ids or dimensions)."""


class CacheCorruptError(HFCorrectorError, OSError):
    """A saved cache failed its integrity check (row count or checksum)."""


class ConfigError(HFCorrectorError, ValueError):
    """An argument or configuration value is invalid."""


class NonFiniteError(HFCorrectorError, FloatingPointError):
    """A loss, embedding or corrector output became NaN or inf during training."""


class UnsafeOverwriteError(HFCorrectorError, FileExistsError):
    """A save was refused because it would remove or hide files it did not write (names the path and the files)."""


__all__ = [
    "HFCorrectorError",
    "DataFormatError",
    "CacheMismatchError",
    "CacheCorruptError",
    "ConfigError",
    "NonFiniteError",
    "UnsafeOverwriteError",
]
