"""The stale-cache store."""

from .stale_cache import INITIAL_STEP, StaleCache, atomic_replace_dir, check_finite

__all__ = ["INITIAL_STEP", "StaleCache", "atomic_replace_dir", "check_finite"]
