"""Log records of one logger in a test, whatever earlier tests did to logging (a dictConfig elsewhere in the suite
can disable existing loggers or raise their level, so ``caplog`` sees nothing when run after the rest of the
suite)."""

from __future__ import annotations

import contextlib
import logging


@contextlib.contextmanager
def warnings_of(name: str, level: int = logging.WARNING):
    """Yield a list that collects the messages ``name`` logs at ``level`` or above while the block runs."""
    found: list[str] = []
    handler = logging.Handler(level)
    handler.emit = lambda record: found.append(record.getMessage())
    log = logging.getLogger(name)
    saved = (log.disabled, log.level)
    log.disabled, log.level = False, level
    log.addHandler(handler)
    try:
        yield found
    finally:
        log.removeHandler(handler)
        log.disabled, log.level = saved
