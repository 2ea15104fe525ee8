"""What a card, a config or a Hub push may show for a name: Hub ids kept, local paths reduced to their folder name,
tokens redacted.

Example:
    >>> public_name("/home/me/run1/my-model"), public_model_id("org/name")
    ('my-model', 'org/name')
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import TrainingArguments

REDACTED = "<REDACTED>"
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
_HF_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+)/snapshots/[^/]+")


def is_hub_id(name: str | None) -> bool:
    """Whether ``name`` can be a Hub repo id (``owner/name`` or a legacy ``name``) and is not a local path."""
    if not name or not isinstance(name, str):
        return False
    if os.path.isabs(name) or name.startswith((".", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.fullmatch(name)) and ".." not in name


def public_model_id(name: str | os.PathLike | None) -> str | None:
    """The Hub id a model name stands for: a Hub id itself, or the id of a Hugging Face cache snapshot folder
    (``.../models--org--name/snapshots/<sha>``); ``None`` for any other local path.

    Example:
        >>> public_model_id("/home/me/.cache/huggingface/hub/models--org--name/snapshots/abc123")
        'org/name'
        >>> public_model_id("/data/my-model") is None
        True
    """
    if name is None:
        return None
    text = str(name)
    if is_hub_id(text):
        return text
    match = _HF_CACHE_SNAPSHOT.search(text.replace(os.sep, "/"))
    if match:
        candidate = match.group(1).replace("--", "/")
        return candidate if is_hub_id(candidate) else None
    return None


def public_name(name: str | os.PathLike | None) -> str | None:
    """What a card may show for a model or dataset name: its Hub id, else the last part of a local path (never the
    path itself; ``None`` for an empty name).

    Example:
        >>> public_name("/home/me/run1/my-model"), public_name("org/name")
        ('my-model', 'org/name')
    """
    if name is None or str(name) == "":
        return None
    hub_id = public_model_id(name)
    if hub_id is not None:
        return hub_id
    text = str(name).rstrip("/\\")
    return Path(text).name or None


def scrub_local_paths(text: str, paths: list[str | os.PathLike | None] | tuple = ()) -> str:
    """Replace each local path of ``paths`` (and its resolved form) occurring in ``text`` by its folder name.

    The last line of defence for cards: values meant for cards go through :func:`public_name` first.
    """
    candidates = set()
    for path in paths:
        if not path:
            continue
        raw = str(path)
        if not (os.path.isabs(raw) or raw.startswith(("~", "."))):
            continue
        candidates.add(raw)
        try:
            candidates.add(str(Path(raw).expanduser().resolve()))
        except (OSError, RuntimeError):
            pass
    for candidate in sorted(candidates, key=len, reverse=True):  # longest first: nested paths
        if len(candidate) <= 1:
            continue
        # the candidate and any path below it, e.g. the temp dir and /home/me/run1/model -> "model"
        pattern = re.compile(re.escape(candidate.rstrip("/\\")) + r"(?:[/\\][\w.\-]+)*(?![\w.\-])")
        text = pattern.sub(lambda m: Path(m.group(0)).name or "local folder", text)
    return text


def redact(text: str, secrets: list[str | None] | tuple[str | None, ...] = ()) -> str:
    """Replace every secret (Hub tokens) occurring in ``text``."""
    for secret in secrets:
        if secret and isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return text


def known_secrets(args: TrainingArguments | None = None) -> list[str]:
    """Tokens that must never be written: ``args.*_token`` and the ``HF_TOKEN`` environment variable."""
    secrets = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    if args is not None:
        for f in dataclasses.fields(args) if dataclasses.is_dataclass(args) else []:
            if f.name.endswith("_token"):
                value = getattr(args, f.name, None)
                secrets.append(value if isinstance(value, str) else None)
    return [s for s in secrets if s]


__all__ = ["REDACTED", "is_hub_id", "known_secrets", "public_model_id", "public_name", "redact", "scrub_local_paths"]
