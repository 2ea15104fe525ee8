"""Serve a trained retriever from its corrected cache, without re-encoding the whole corpus.

Example:
    >>> from hf_corrector.serving import CorrectedIndex
    >>> index = CorrectedIndex.from_trainer(trainer, reencode_budget=0.05)  # doctest: +SKIP
"""

from .corrected_index import CORRECTED_STEP, CorrectedIndex, build_corrected_index, serve_matrix
from .maps import MAP_METHODS, apply_map, fit_map
from .selection import SELECTIONS, select_rows

__all__ = ["CORRECTED_STEP", "CorrectedIndex", "build_corrected_index", "serve_matrix", "MAP_METHODS", "apply_map",
           "fit_map", "SELECTIONS", "select_rows"]
