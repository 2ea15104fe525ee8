"""Pooling of token states into one vector per text.

Example:
    >>> import torch
    >>> states = torch.ones(2, 3, 4); mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    >>> pool(states, mask, "mean").shape
    torch.Size([2, 4])
"""

from __future__ import annotations

import torch

from ..errors import ConfigError

POOLING_MODES = ("mean", "cls", "last")


def check_pooling(mode: str) -> str:
    """Return ``mode`` if supported, else raise :class:`ConfigError` listing the choices."""
    if mode not in POOLING_MODES:
        raise ConfigError(f"unknown pooling {mode!r}; choose one of {', '.join(POOLING_MODES)}")
    return mode


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool ``hidden`` (B, L, d) with ``attention_mask`` (B, L) by ``mode`` (mean | cls | last)."""
    check_pooling(mode)
    if mode == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    # last non-padding token; works for left and right padding
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = (positions * attention_mask.long()).max(dim=1).values
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
