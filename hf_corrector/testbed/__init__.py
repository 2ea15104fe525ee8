"""A synthetic testbed where the exact softmax and its gradient are known (issue 18).

* :mod:`~hf_corrector.testbed.ground_truth`: data, encoders, stale/fresh parameters by controlled drift, exact
  softmax and exact full-softmax gradient (:func:`make_testbed`).
* :mod:`~hf_corrector.testbed.adapter`: the library's real cache manager and sampler context over plain tensors.
* :mod:`~hf_corrector.testbed.strategies`: every selection strategy through the real samplers (:data:`STRATEGIES`).
* :mod:`~hf_corrector.testbed.evaluate`: KL, top-k recall, gradient error of a sampler (:func:`evaluate_sampler`).

Example:
    >>> from hf_corrector.testbed import make_testbed, build_strategy, evaluate_sampler
    >>> tb = make_testbed(N=2000, drift=5, pretrain_steps=5)
    >>> metrics = evaluate_sampler(build_strategy("stale-topk", tb).sampler, tb, k=8, num_queries=32)
    >>> sorted(metrics)[:3]
    ['draws', 'grad_cos', 'grad_cos_single']
"""

from .adapter import setup_sampler, tensor_cache_manager, tensor_context
from .evaluate import draw_rows, evaluate_sampler, sampled_gradient
from .ground_truth import (DualEncoder, Encoder, Testbed, exact_gradient, exact_log_softmax, exact_softmax,
                           full_softmax_loss, make_testbed)
from .strategies import STRATEGIES, Built, StrategyOptions, build_strategy, evaluate_strategy, register

__all__ = ["Built", "DualEncoder", "Encoder", "STRATEGIES", "StrategyOptions", "Testbed", "build_strategy",
           "draw_rows", "evaluate_sampler", "evaluate_strategy", "exact_gradient", "exact_log_softmax", "exact_softmax",
           "full_softmax_loss", "make_testbed", "register", "sampled_gradient", "setup_sampler", "tensor_cache_manager",
           "tensor_context"]
