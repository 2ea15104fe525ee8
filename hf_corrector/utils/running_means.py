"""Per-step values averaged over a logging window, kept as running sums: memory grows with the number of metrics,
never with the number of steps (a run with ``logging_strategy="no"`` never empties its window).

The sums are added in step order, so a window's mean is the one ``sum(values) / len(values)`` gives.

Example:
    >>> means = RunningMeans()
    >>> means.add("task_loss", 2.0); means.add("task_loss", 1.0); means.add("skipped_steps", 1.0)
    >>> means.last["task_loss"]
    1.0
    >>> means.pop(counted=("skipped_steps",))
    {'task_loss': 1.5, 'skipped_steps': 1}
    >>> means.pop()
    {}
"""

from __future__ import annotations

from collections.abc import Iterable


class RunningMeans:
    """Sums and counts of named per-step values since the last :meth:`pop`; ``last`` holds each name's newest."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self._sums[name] = self._sums.get(name, 0) + value
        self._counts[name] = self._counts.get(name, 0) + 1
        self.last[name] = value

    def extend(self, name: str, values: Iterable[float]) -> None:
        for value in values:
            self.add(name, value)

    def merge(self, other: RunningMeans) -> None:
        """Add ``other``'s window to this one (``other`` is emptied)."""
        for name, total in other._sums.items():
            self._sums[name] = self._sums.get(name, 0) + total
            self._counts[name] = self._counts.get(name, 0) + other._counts[name]
        self.last.update(other.last)
        other.clear()

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def __len__(self) -> int:
        return len(self._sums)

    def clear(self) -> None:
        self._sums.clear()
        self._counts.clear()

    def pop(self, counted: Iterable[str] = (), digits: int = 6) -> dict[str, float]:
        """The window's means rounded to ``digits`` (the number of values for names in ``counted``), emptied."""
        counted = set(counted)
        out = {name: self._counts[name] if name in counted else round(total / self._counts[name], digits)
               for name, total in self._sums.items()}
        self.clear()
        return out


__all__ = ["RunningMeans"]
