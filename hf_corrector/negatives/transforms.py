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

Amortised correction (``corrected_view_steps=M``, :class:`CorrectorTransform`): instead of applying h to every row
at every step, the corrected view ``h_s(g')`` of this process's rows is materialised (chunked, in the cache's dtype
or the scoring dtype) with a frozen copy ``h_s`` of the corrector taken every M steps, and selection between
recomputations is a plain scan of the view. Rows written back into the cache are re-corrected with the same ``h_s``,
and a cache refresh makes the view due again, so the view is always exactly ``h_s`` applied to the current cache.
``h_s`` and its step are saved in checkpoints: a resumed run rebuilds the same view and continues exactly.

Example:
    >>> import torch
    >>> IdentityTransform().function(step=0) is None
    True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch

from .context import SamplerContext

Transform = Callable[[torch.Tensor], torch.Tensor]


class ScoreTransform:
    """Base class: the identity. Subclasses override :meth:`_function` (and :meth:`_query_map` when linear)."""

    name = "identity"
    citation: str | None = None

    def __init__(self) -> None:
        self.bypassed = False
        self.context: SamplerContext | None = None

    # -- events (no-ops here; the sampler forwards its own) -------------------------------------------------------------
    def setup(self, context: SamplerContext) -> None:
        """Called by the sampler's setup with its :class:`~hf_corrector.negatives.context.SamplerContext`."""
        self.context = context

    def on_step_end(self, step: int) -> None:
        """Periodic maintenance after optimizer step ``step``."""

    def on_cache_refreshed(self, step: int) -> None:
        """The whole cache was re-encoded at ``step``."""

    def on_targets(self, rows: torch.Tensor) -> None:
        """The step's training targets (every process's rows), after write-back."""

    def function(self, step: int) -> Transform | None:
        """The map applied to stale rows at ``step`` (None: use them as they are)."""
        return None if self.bypassed else self._function(step)

    def selection_function(self, step: int) -> Transform | None:
        """The map negative selection scores with at ``step`` (the materialised view's, when there is one)."""
        return self.function(step)

    def view(self, step: int) -> Callable[[int, int], torch.Tensor] | None:
        """``(start, stop) -> corrected rows`` (global row numbers inside the process's rows) of a materialised
        corrected view to scan instead of mapping rows; None when there is none."""
        return None

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

    #: rows corrected at once when materialising the view (keeps the MLP's activations in cache)
    view_chunk_size = 8192

    def __init__(self, get_corrector: Callable[[], Any], view_steps: int = 0, view_dtype: torch.dtype | None = None):
        super().__init__()
        self.get_corrector = get_corrector
        self.view_steps = int(view_steps)
        self.view_dtype = view_dtype
        self.snapshot: Any = None  # h_s: the frozen corrector of the view
        self.view_step: int | None = None
        self.view_due = True
        self._view: torch.Tensor | None = None

    # -- amortised correction -----------------------------------------------------------------------------------------
    @property
    def amortised(self) -> bool:
        return self.view_steps > 0 and not self.bypassed and self.get_corrector() is not None

    def _take_snapshot(self, step: int) -> None:
        if self.view_due or self.view_step is None or step - self.view_step >= self.view_steps or step < self.view_step:
            self.snapshot = _frozen_copy(self.get_corrector())
            self.view_step, self.view_due, self._view = step, False, None

    def selection_function(self, step: int) -> Transform | None:
        if not self.amortised:
            return self.function(step)
        self._take_snapshot(step)
        return _apply_eval(self.snapshot)

    @torch.no_grad()
    def view(self, step: int) -> Callable[[int, int], torch.Tensor] | None:
        if not self.amortised or self.context is None:
            return None
        self._take_snapshot(step)
        cache = self.context.cache
        lo, hi = cache.local_rows
        if self._view is None:
            dtype = self.view_dtype or cache.read_chunk(lo, min(lo + 1, hi)).dtype
            apply = _apply_eval(self.snapshot)
            device = cache.device  # cache_device: the view lives with the rows
            view = torch.empty(hi - lo, cache.dim, dtype=dtype, device=device)
            for start in range(lo, hi, self.view_chunk_size):
                stop = min(start + self.view_chunk_size, hi)
                view[start - lo : stop - lo] = apply(cache.read_chunk(start, stop).float()).to(device, dtype)
            self._view = view

        def read(start: int, stop: int, view: torch.Tensor = self._view) -> torch.Tensor:
            return view[start - lo : stop - lo]

        return read

    @torch.no_grad()
    def on_targets(self, rows: torch.Tensor) -> None:
        """Rows written back: re-correct them with the view's ``h_s`` (the view stays ``h_s`` of the cache)."""
        if self._view is None or self.snapshot is None or self.context is None \
                or not self.context.cache.write_back:
            return
        lo, hi = self.context.cache.local_rows
        mine = torch.unique(rows[(rows >= lo) & (rows < hi)])
        if mine.numel():
            stale = self.context.cache.local(mine)
            self._view[(mine - lo).to(self._view.device)] = _apply_eval(self.snapshot)(stale).to(self._view.device,
                                                                                                 self._view.dtype)

    def on_cache_refreshed(self, step: int) -> None:
        """The cache was re-encoded: the view is recomputed (with a new ``h_s``) when next used."""
        self.view_due, self._view = True, None

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        if self.snapshot is None:
            return {}, {}
        tensors = {f"view_corrector.{k}": v.detach().clone() for k, v in self.snapshot.state_dict().items()}
        return {"view_step": self.view_step, "view_due": self.view_due}, tensors

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        weights = {k[len("view_corrector."):]: v for k, v in tensors.items() if k.startswith("view_corrector.")}
        corrector = self.get_corrector()
        if not weights or corrector is None or "view_step" not in state:
            return
        self.snapshot = _frozen_copy(corrector)
        self.snapshot.load_state_dict(weights)
        self.view_step, self.view_due = state["view_step"], bool(state.get("view_due", False))
        self._view = None  # rebuilt from h_s and the restored cache when next used

    # -- per-step correction --------------------------------------------------------------------------------------
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


def _frozen_copy(corrector: Any) -> Any:
    """A detached eval-mode copy of a corrector (the h_s of a materialised view)."""
    frozen = copy.deepcopy(corrector)
    frozen.eval()
    for param in frozen.parameters():
        param.requires_grad_(False)
    return frozen


def _apply_eval(corrector: Any) -> Transform:
    device = next(corrector.parameters()).device

    @torch.no_grad()
    def apply(rows: torch.Tensor) -> torch.Tensor:
        return corrector(rows.to(device, torch.float32)).float()

    return apply
