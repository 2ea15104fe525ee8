"""LoRA and other PEFT adapters on the retriever's encoder tower(s).

Example:
    >>> retriever = apply_peft(retriever, LoraConfig(r=8, target_modules=["query", "value"]))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

PEFT_DIR = "peft_adapter"


def apply_peft(retriever: Any, peft_config: Any) -> Any:
    """Wrap the encoder (and the query encoder of a two-tower retriever) with ``peft.get_peft_model``."""
    from peft import get_peft_model

    retriever.encoder = get_peft_model(retriever.encoder, peft_config)
    if retriever.query_encoder is not None:
        retriever.query_encoder = get_peft_model(retriever.query_encoder, peft_config)
    return retriever


def save_peft_retriever(retriever: Any, output_dir: str) -> None:
    """Save merged weights (loadable without peft) and the adapters (for resuming)."""
    from peft import get_peft_model_state_dict

    adapters = {"encoder": get_peft_model_state_dict(retriever.encoder)}
    if retriever.query_encoder is not None:
        adapters["query_encoder"] = get_peft_model_state_dict(retriever.query_encoder)
    os.makedirs(os.path.join(output_dir, PEFT_DIR), exist_ok=True)
    for name, sd in adapters.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(output_dir, PEFT_DIR, f"{name}.safetensors"))
    merged = copy.deepcopy(retriever)
    merged.encoder = merged.encoder.merge_and_unload()
    if merged.query_encoder is not None:
        merged.query_encoder = merged.query_encoder.merge_and_unload()
    merged.save_pretrained(output_dir)


def load_peft_retriever(retriever: Any, folder: Path) -> None:
    """Load the adapters :func:`save_peft_retriever` wrote into a PEFT-wrapped retriever."""
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(retriever.encoder, load_file(str(folder / PEFT_DIR / "encoder.safetensors")))
    if retriever.query_encoder is not None:
        set_peft_model_state_dict(retriever.query_encoder, load_file(str(folder / PEFT_DIR / "query_encoder.safetensors")))
