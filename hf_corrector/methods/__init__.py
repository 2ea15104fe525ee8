"""Related methods plugged into :class:`~hf_corrector.CorrectorTrainer` through hooks.

``build_method_hooks(trainer)`` returns a dict of optional callables the trainer calls:

* ``transform() -> callable | None``: map applied to stale rows before scoring (e.g. the Nyström map);
* ``select(q, exclude, keys) -> (B, k) rows``: replace cache scoring entirely (e.g. ANCE-Tele pools);
* ``candidates(q) -> (B, P) rows``: two-stage selection (a faiss index over the stale cache);
* ``after_step(targets, fresh, q, inputs)``, ``on_step_end(step)``, ``on_refresh(step)``;
* ``state_dict() -> (json, tensors)`` / ``load_state_dict(json, tensors)``: extra checkpoint state.
"""

from __future__ import annotations

from typing import Any


def build_method_hooks(trainer: Any) -> dict[str, Any]:
    """Hooks for the methods switched on in ``trainer.args`` (none by default)."""
    return {}
