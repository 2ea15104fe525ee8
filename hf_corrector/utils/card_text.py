"""What every card the library writes shares: the Jinja templates' location, the papers to cite, the cache card's
tags, and the formatting of values and repo links. It sits at the bottom of the package (with
:mod:`~hf_corrector.utils.hub_ids`), so the cache's own dataset card (:mod:`hf_corrector.cache.card`) and the hub
layer's model cards share it.

Example:
    >>> format_value(0.12345), format_value(12345), format_value(None)
    ('0.1235', '12,345', '–')
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .hub_ids import is_hub_id, public_name

TEMPLATES_PACKAGE = "hf_corrector.model_cards"
CACHE_TEMPLATE = "cache_dataset.md.j2"
CACHE_TAGS = ["hf-corrector", "embeddings", "stale-cache", "dense-retrieval"]

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


def template_path(name: str) -> Path:
    """Path of a card template: from the source tree next to this package (a checkout or a worktree, whose
    templates may differ from an editable install's), else from the installed package ``hf_corrector.model_cards``."""
    source = Path(__file__).resolve().parents[2] / "model_cards" / name
    if source.is_file():
        return source
    try:
        candidate = resources.files(TEMPLATES_PACKAGE) / name
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError):
        pass
    raise FileNotFoundError(f"card template {name!r} not found in {source.parent} or {TEMPLATES_PACKAGE}")


def format_value(value: Any) -> str:
    """A value as a Markdown table cell: 4 decimals, thousands separators, ``–`` for None, ``|`` escaped."""
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


def repo_link(repo_id: str | None) -> str | None:
    """A Markdown link to a Hub repo (a local folder is named, not linked)."""
    if not repo_id:
        return None
    name = public_name(repo_id)
    return f"[`{name}`](https://huggingface.co/{name})" if is_hub_id(repo_id) else f"`{name}` (a local folder)"


__all__ = ["CACHE_TAGS", "CACHE_TEMPLATE", "CITATIONS", "TEMPLATES_PACKAGE", "format_value", "repo_link", "template_path"]
