"""Common base of the related methods and the composition of their hooks.

A method is an object with optional hook methods (``transform``, ``select``, ``candidates``, ``after_step``,
``on_step_end``, ``on_refresh``) and ``state_dict`` / ``load_state_dict``. :func:`compose_hooks` turns a list of
methods into the hook dict :class:`~hf_corrector.CorrectorTrainer` calls: the event hooks of every method are
called in order, the scoring hooks (``transform``, ``select``, ``candidates``) may each come from one method only,
and checkpoint state is namespaced by the method's ``name`` (JSON under ``{name: ...}``, tensors as
``"{name}.{key}"``).

Example:
    >>> class Counter(Method):
    ...     name = "counter"
    ...     def __init__(self):
    ...         self.steps = 0
    ...     def on_step_end(self, step):
    ...         self.steps += 1
    ...     def state_dict(self):
    ...         return {"steps": self.steps}, {}
    ...     def load_state_dict(self, state, tensors):
    ...         self.steps = state["steps"]
    >>> hooks = compose_hooks([Counter()])
    >>> hooks["on_step_end"](1); hooks["state_dict"]()
    ({'counter': {'steps': 1}}, {})
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

EVENT_HOOKS = ("after_step", "on_step_end", "on_refresh")
SCORING_HOOKS = ("transform", "select", "candidates")


class Method:
    """Base class: every hook is optional; a subclass defines the ones it needs (see :func:`compose_hooks`)."""

    name: str = "method"

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON-serialisable state and named tensors, saved in each checkpoint."""
        return {}, {}

    def load_state_dict(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


def _defines(method: Method, hook: str) -> bool:
    impl = getattr(type(method), hook, None)
    return impl is not None and impl is not getattr(Method, hook, None)


def compose_hooks(methods: Sequence[Method]) -> dict[str, Callable[..., Any]]:
    """The trainer's hook dict for ``methods`` (empty when there are none)."""
    hooks: dict[str, Callable[..., Any]] = {}
    if not methods:
        return hooks
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ConfigError(f"two methods share a name: {names}")
    for hook in SCORING_HOOKS:
        providers = [m for m in methods if _defines(m, hook)]
        if len(providers) > 1:
            raise ConfigError(f"methods {[m.name for m in providers]} all provide the {hook!r} hook; use one of them")
        if providers:
            hooks[hook] = getattr(providers[0], hook)
    for hook in EVENT_HOOKS:
        callees = [getattr(m, hook) for m in methods if _defines(m, hook)]
        if callees:
            hooks[hook] = _chain(callees)

    def state_dict() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        state: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        for m in methods:
            js, ts = m.state_dict()
            state[m.name] = js
            tensors.update({f"{m.name}.{k}": v for k, v in ts.items()})
        return state, tensors

    def load_state_dict(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for m in methods:
            if m.name not in state:
                logger.warning("checkpoint has no state for method %r; it starts afresh", m.name)
                continue
            prefix = f"{m.name}."
            mine = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            m.load_state_dict(state[m.name], mine)

    hooks["state_dict"] = state_dict
    hooks["load_state_dict"] = load_state_dict
    return hooks


def _chain(callees: list[Callable[..., Any]]) -> Callable[..., None]:
    def call_all(*args: Any, **kwargs: Any) -> None:
        for fn in callees:
            fn(*args, **kwargs)

    return call_all
