"""What a card may say, for every card the library writes (model, corrector and cache cards): public names
(never a local path), redacted secrets, number formatting, the papers to cite and where the Jinja templates are.

It sits at the bottom of the package (it imports nothing from it), so the cache's own dataset card and the hub
layer's model cards share it.

Example:
    >>> public_name("/home/me/run1/my-model"), fmt(0.12345), fmt(12345)
    ('my-model', '0.1235', '12,345')
"""

from __future__ import annotations

import dataclasses
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

TEMPLATES_PACKAGE = "hf_corrector.model_cards"
CACHE_TAGS = ["hf-corrector", "embeddings", "stale-cache", "dense-retrieval"]
CACHE_TEMPLATE = "cache_dataset.md.j2"
REDACTED = "<REDACTED>"

CITATIONS = {
    "corrector": """@inproceedings{monath2024fresh,
  title     = {A Fresh Take on Stale Embeddings: Improving Dense Retriever Training with Corrector Networks},
  author    = {Monath, Nicholas and Grathwohl, Will and Boratko, Michael and Fergus, Rob and McCallum, Andrew and Zaheer, Manzil},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {235},
  year      = {2024}
}""",
    "ance": """@inproceedings{xiong2021approximate,
  title     = {Approximate Nearest Neighbor Negative Contrastive Learning for Dense Text Retrieval},
  author    = {Xiong, Lee and Xiong, Chenyan and Li, Ye and Tang, Kwok-Fung and Liu, Jialin and Bennett, Paul N. and Ahmed, Junaid and Overwijk, Arnold},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2021}
}""",
    "ance-tele": """@inproceedings{sun2022reduce,
  title     = {Reduce Catastrophic Forgetting of Dense Retrieval Training with Teleportation Negatives},
  author    = {Sun, Si and Xiong, Chenyan and Yu, Yue and Overwijk, Arnold and Liu, Zhiyuan and Bao, Jie},
  booktitle = {Proceedings of the 2022 Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  year      = {2022}
}""",
    "nystrom": """@inproceedings{monath2023improving,
  title     = {Improving Dual-Encoder Training through Dynamic Indexes for Negative Mining},
  author    = {Monath, Nicholas and Zaheer, Manzil and Allen, Kelsey and McCallum, Andrew},
  booktitle = {Proceedings of The 26th International Conference on Artificial Intelligence and Statistics (AISTATS)},
  year      = {2023}
}""",
}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)?")
_HF_CACHE_SNAPSHOT = re.compile(r"(?:^|/)models--([^/]+)/snapshots/[^/]+")


def template_path(name: str) -> Path:
    """Path of a card template: from the source tree next to this package (a checkout or a worktree, whose
    templates may differ from an editable install's), else from the installed package ``hf_corrector.model_cards``."""
    source = Path(__file__).resolve().parents[1] / "model_cards" / name
    if source.is_file():
        return source
    try:
        candidate = resources.files(TEMPLATES_PACKAGE) / name
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError):
        pass
    raise FileNotFoundError(f"card template {name!r} not found in {source.parent} or {TEMPLATES_PACKAGE}")


# ---------------------------------------------------------------------------------------------------------------------
# small helpers
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


def known_secrets(args: Any = None) -> list[str]:
    """Tokens that must never be written: ``args.*_token`` and the ``HF_TOKEN`` environment variable."""
    secrets = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    if args is not None:
        for f in dataclasses.fields(args) if dataclasses.is_dataclass(args) else []:
            if f.name.endswith("_token"):
                value = getattr(args, f.name, None)
                secrets.append(value if isinstance(value, str) else None)
    return [s for s in secrets if s]


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 1e-3:
            return f"{value:.3g}"
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    if value is None:
        return "–"
    text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def link(repo_id: str | None) -> str | None:
    if not repo_id:
        return None
    name = public_name(repo_id)
    return f"[`{name}`](https://huggingface.co/{name})" if is_hub_id(repo_id) else f"`{name}` (a local folder)"


__all__ = ["CACHE_TAGS", "CACHE_TEMPLATE", "CITATIONS", "REDACTED", "TEMPLATES_PACKAGE", "fmt", "is_hub_id",
           "known_secrets", "link", "public_model_id", "public_name", "redact", "scrub_local_paths", "template_path"]
