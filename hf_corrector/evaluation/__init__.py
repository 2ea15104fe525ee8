"""Retrieval evaluation."""

from .metrics import DEFAULT_METRICS, evaluate_run, exact_search, retrieval_metrics

__all__ = ["DEFAULT_METRICS", "evaluate_run", "exact_search", "retrieval_metrics"]
