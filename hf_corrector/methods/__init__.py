"""Related methods plugged into :class:`~hf_corrector.CorrectorTrainer` through hooks.

``build_method_hooks(trainer)`` returns a dict of optional callables the trainer calls:

* ``transform() -> callable | None``: map applied to stale rows before scoring (e.g. the Nyström map);
* ``select(q, exclude, keys) -> (B, k) rows``: replace cache scoring entirely (e.g. ANCE-Tele pools);
* ``candidates(q) -> (B, P) rows``: two-stage selection (a faiss index over the stale cache);
* ``after_step(targets, fresh, q, inputs)``, ``on_step_end(step)``, ``on_refresh(step)``;
* ``state_dict() -> (json, tensors)`` / ``load_state_dict(json, tensors)``: extra checkpoint state.

Which methods are on follows from the arguments:

=========================================  ========================================================================
arguments                                  method
=========================================  ========================================================================
``correction="nystrom"``                   :class:`~hf_corrector.methods.nystrom.NystromCorrection` (``transform``)
``tele_negatives=True``                    :class:`~hf_corrector.methods.tele.TeleNegatives` (``select``)
``candidate_index`` in flat / ivf / hnsw   :class:`~hf_corrector.methods.candidate_index.CandidateSelection`
                                           (``candidates``; searched with ``A^T q`` / ``W q`` for the linear
                                           corrector / Nyström map)
=========================================  ========================================================================

They combine: Nyström + ANCE-Tele builds the in-between pools from the Nyström-corrected cache; Nyström + a
candidate index searches the stale index with the folded query. ANCE-Tele replaces per-step scoring, so a
candidate index is not built alongside it (a warning says so). The method objects are kept in
``trainer.method_state[name]`` (``"nystrom"``, ``"tele"``, ``"candidates"``).

Example:
    >>> args = CorrectorTrainingArguments("out", correction="nystrom", nystrom_landmarks=256)  # doctest: +SKIP
    >>> trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=data)  # doctest: +SKIP
    >>> sorted(trainer.method_hooks)  # doctest: +SKIP
    ['after_step', 'load_state_dict', 'on_refresh', 'on_step_end', 'state_dict', 'transform']
"""

from __future__ import annotations

import logging
from typing import Any

from .base import Method, compose_hooks
from .candidate_index import CandidateIndex, CandidateSelection
from .nystrom import NystromCorrection, fit_nystrom_map
from .tele import TeleNegatives

logger = logging.getLogger(__name__)

__all__ = [
    "CandidateIndex",
    "CandidateSelection",
    "Method",
    "NystromCorrection",
    "TeleNegatives",
    "build_method_hooks",
    "compose_hooks",
    "fit_nystrom_map",
]


def build_methods(trainer: Any) -> list[Method]:
    """The method objects switched on in ``trainer.args``, in hook order (Nyström, candidate index, ANCE-Tele)."""
    args = trainer.args
    methods: list[Method] = []
    nystrom = None
    if args.correction == "nystrom":
        nystrom = NystromCorrection(trainer)
        methods.append(nystrom)
    if args.candidate_index != "none":
        if args.tele_negatives:
            logger.warning("candidate_index=%r is not used with tele_negatives=True (ANCE-Tele draws negatives from "
                           "its pools instead of scoring the cache each step)", args.candidate_index)
        else:
            methods.append(CandidateSelection(trainer, query_map=nystrom.query_map if nystrom is not None else None))
    if args.tele_negatives:
        methods.append(TeleNegatives(trainer))
    return methods


def build_method_hooks(trainer: Any) -> dict[str, Any]:
    """Hooks for the methods switched on in ``trainer.args`` (none by default)."""
    methods = build_methods(trainer)
    state = getattr(trainer, "method_state", None)
    if isinstance(state, dict):
        state.update({m.name: m for m in methods})
    return compose_hooks(methods)
