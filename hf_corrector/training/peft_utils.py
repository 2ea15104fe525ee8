"""LoRA and other PEFT adapters on the retriever's encoder tower(s), saved in PEFT's own format.

A LoRA run's saved model (``trainer.save_model`` and every checkpoint) holds:

* the merged retriever at the root (``RetrieverModel.from_pretrained`` and ``SentenceTransformer`` load it
  without peft);
* the adapter of the shared (or document) encoder in ``peft_adapter/`` and, with separate towers, the query
  encoder's in ``peft_adapter_query/``: ``adapter_config.json`` + ``adapter_model.safetensors`` written by
  ``PeftModel.save_pretrained``, so ``PeftModel.from_pretrained(base_encoder, folder, subfolder="peft_adapter")``
  (or the folder path itself) loads them onto a fresh base encoder. Resuming reads them back the same way.

Example:
    >>> retriever = apply_peft(retriever, LoraConfig(r=8, target_modules=["query", "value"]))  # doctest: +SKIP
    >>> encoder = PeftModel.from_pretrained(AutoModel.from_pretrained(base), "out/peft_adapter")  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PEFT_DIR = "peft_adapter"
PEFT_QUERY_DIR = "peft_adapter_query"
#: the raw-safetensors files of hf-corrector <= 0.1 (read when resuming from an old checkpoint)
_LEGACY_FILES = {PEFT_DIR: "encoder.safetensors", PEFT_QUERY_DIR: "query_encoder.safetensors"}


def apply_peft(retriever: Any, peft_config: Any) -> Any:
    """Wrap the encoder (and the query encoder of a two-tower retriever) with ``peft.get_peft_model``."""
    from peft import get_peft_model

    retriever.encoder = get_peft_model(retriever.encoder, peft_config)
    if retriever.query_encoder is not None:
        retriever.query_encoder = get_peft_model(retriever.query_encoder, copy.deepcopy(peft_config))
    return retriever


def _adapters(retriever: Any) -> dict[str, Any]:
    """Adapter folder name -> PEFT-wrapped tower."""
    out = {PEFT_DIR: retriever.encoder}
    if retriever.query_encoder is not None:
        out[PEFT_QUERY_DIR] = retriever.query_encoder
    return out


def _public_base_name(retriever: Any) -> str | None:
    """The base model's Hub id for ``adapter_config.json`` (never a local path, which would be published)."""
    from ..utils.hub_ids import is_hub_id

    name = getattr(retriever.config, "base_model_name_or_path", None)
    return name if is_hub_id(name) else None


def save_peft_retriever(retriever: Any, output_dir: str | os.PathLike) -> None:
    """Save the merged retriever (loadable without peft) and each tower's adapter in PEFT's format."""
    base_name = _public_base_name(retriever)
    for folder, tower in _adapters(retriever).items():
        target = Path(output_dir) / folder
        tower.save_pretrained(str(target))
        config_file = target / "adapter_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if config.get("base_model_name_or_path") != base_name:
            config["base_model_name_or_path"] = base_name
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        readme = target / "README.md"  # PEFT's generated card names the base by its (maybe local) path
        if readme.is_file():
            readme.unlink()
    merged = copy.deepcopy(retriever)
    merged.encoder = merged.encoder.merge_and_unload()
    if merged.query_encoder is not None:
        merged.query_encoder = merged.query_encoder.merge_and_unload()
    merged.save_pretrained(output_dir)


def load_peft_retriever(retriever: Any, folder: str | os.PathLike) -> None:
    """Load the adapters :func:`save_peft_retriever` wrote into a PEFT-wrapped retriever (resuming).

    Reads PEFT's format (``adapter_model.safetensors``) and, for old checkpoints, the raw safetensors files.
    """
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights
    from safetensors.torch import load_file

    folder = Path(folder)
    for name, tower in _adapters(retriever).items():
        legacy = folder / PEFT_DIR / _LEGACY_FILES[name]
        if (folder / name / "adapter_config.json").is_file():
            weights = load_peft_weights(str(folder / name), device="cpu")
        elif legacy.is_file():
            logger.info("%s: adapter in the raw format of hf-corrector <= 0.1", legacy)
            weights = load_file(str(legacy))
        else:
            raise FileNotFoundError(f"no PEFT adapter for the {name!r} tower in {folder} "
                                    f"(looked for {folder / name / 'adapter_config.json'})")
        result = set_peft_model_state_dict(tower, weights)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise ValueError(f"{folder / name}: adapter weights do not match the model (unexpected {unexpected[:3]})")
