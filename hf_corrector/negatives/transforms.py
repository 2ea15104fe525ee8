"""Score transforms: what a stale cache row is mapped to before a query scores it.

A transform is a small object a sampler holds. :meth:`ScoreTransform.function` returns the map for the current
step (``None`` = score the stale rows as they are); :meth:`ScoreTransform.query_map` returns a matrix ``M`` with
``<q, map(v)> = <M q, v> + c(q)`` when the map is linear, so a stale index (or a plain scan) can be searched with
``M q`` instead of mapping every row. A transform may also listen to the cache manager (``on_cache_refreshed``,
``on_targets``) and keep checkpoint state.

* :class:`IdentityTransform`: the stale cache itself (``correction="none"``).
* :class:`CorrectorTransform`: the trained corrector network h (``correction="mlp"``), in eval mode.
* :class:`LinearCorrectorTransform`: a linear corrector ``h(v) = A v + b`` folded into the query
  (``correction="linear"``): rows are scored as ``<A^T q, v> + <q, b>``, no per-row work.
* :class:`~hf_corrector.negatives.nystrom.NystromTransform`: a Nyström map refitted on re-encoded landmarks.

``bypassed`` (set by :class:`~hf_corrector.training.callbacks.CorrectorFallbackCallback`) makes a transform
score stale rows until the corrector recovers.

Example:
    >>> import torch
    >>> IdentityTransform().function(step=0) is None
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Transform = Callable[[torch.Tensor], torch.Tensor]


class ScoreTransform:
    """Base class: the identity. Subclasses override :meth:`_function` (and :meth:`_query_map` when linear)."""

    name = "identity"
    citation: str | None = None

    def __init__(self) -> None:
        self.bypassed = False

    def function(self, step: int) -> Transform | None:
        """The map applied to stale rows at ``step`` (None: use them as they are)."""
        return None if self.bypassed else self._function(step)

    def query_map(self) -> torch.Tensor | None:
        """``M`` with ``<q, map(v)> = <M q, v> + c(q)`` (rows: ``q @ M.T``), or None when there is none."""
        return None if self.bypassed else self._query_map()

    def _function(self, step: int) -> Transform | None:
        return None

    def _query_map(self) -> torch.Tensor | None:
        return None

    @property
    def folds_into_query(self) -> bool:
        """True when scoring should use :meth:`query_map` instead of mapping rows."""
        return False

    def query_offset(self, queries: torch.Tensor) -> torch.Tensor | None:
        """The per-query constant ``c(q)`` of :meth:`query_map` (None = 0)."""
        return None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


class IdentityTransform(ScoreTransform):
    """Score the stale cache as it is."""


class CorrectorTransform(ScoreTransform):
    """Apply the corrector network h to each chunk of stale rows (in eval mode: no dropout).

    Args:
        get_corrector: returns the current corrector (a function, so the trainer's wrapped model can be swapped).
    """

    name = "corrector"

    def __init__(self, get_corrector: Callable[[], Any]):
        super().__init__()
        self.get_corrector = get_corrector

    def _function(self, step: int) -> Transform | None:
        corrector = self.get_corrector()
        if corrector is None:
            return None
        device = next(corrector.parameters()).device

        def apply(rows: torch.Tensor) -> torch.Tensor:
            was_training = corrector.training
            corrector.eval()
            try:
                return corrector(rows.to(device))
            finally:
                corrector.train(was_training)

        return apply

    def _query_map(self) -> torch.Tensor | None:
        corrector = self.get_corrector()
        return None if corrector is None else corrector.query_transform()


class LinearCorrectorTransform(CorrectorTransform):
    """A linear corrector folded into the query: ``<q, A v + b> = <A^T q, v> + <q, b>``."""

    name = "linear-corrector"

    @property
    def folds_into_query(self) -> bool:
        return not self.bypassed and self.get_corrector() is not None

    def query_offset(self, queries: torch.Tensor) -> torch.Tensor | None:
        corrector = self.get_corrector()
        bias = getattr(getattr(corrector, "linear", None), "bias", None) if corrector is not None else None
        return None if bias is None else queries.float() @ bias.detach().to(queries.device, torch.float32)
