"""Where the method's semantics differ from a plain ``transformers.Trainer``, said once in the logs.

Gradient accumulation with in-batch negatives is **not** a bigger batch: each micro-batch of
``per_device_train_batch_size`` queries is its own softmax, whose negatives are the other queries' positives and
negatives *of that micro-batch only*. Accumulating ``gradient_accumulation_steps`` micro-batches averages their
gradients, so the effective batch grows but the number of in-batch negatives per query does not (unlike
sentence-transformers' ``CachedMultipleNegativesRankingLoss`` / GradCache, which would be needed for that).

Example:
    >>> from types import SimpleNamespace
    >>> warn_accumulation_is_not_a_bigger_batch(SimpleNamespace(in_batch_negatives=True,
    ...     gradient_accumulation_steps=1, per_device_train_batch_size=8))
    False
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)


def seed_before_set_up(args: Any) -> None:
    """Seed as ``Trainer.__init__`` does, but before the corrector (and anything else random) is built, so the same
    seed twice in one process gives the same run whatever ran before (``Trainer`` seeds only in its own
    ``__init__``, after :class:`CorrectorTrainer` has initialised the corrector from the global generator)."""
    from transformers.trainer_utils import enable_full_determinism, set_seed

    if getattr(args, "full_determinism", False):
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def warn_accumulation_is_not_a_bigger_batch(args: Any) -> bool:
    """Log one warning when ``gradient_accumulation_steps > 1`` with in-batch negatives; return whether it did."""
    steps = int(getattr(args, "gradient_accumulation_steps", 1) or 1)
    if steps <= 1 or not getattr(args, "in_batch_negatives", False):
        return False
    batch = int(args.per_device_train_batch_size)
    logger.warning(
        "gradient_accumulation_steps=%d with in_batch_negatives: each query still sees the in-batch negatives of "
        "its micro-batch of %d queries (per_device_train_batch_size), not of %d; accumulation averages gradients, "
        "it does not make the softmax bigger. Raise per_device_train_batch_size for more in-batch negatives.",
        steps, batch, batch * steps)
    return True


def refuse_a_softmax_of_one(args: Any) -> None:
    """Refuse ``num_negatives=0`` with ``per_device_train_batch_size=1``: each query's softmax would hold its
    positive alone (in-batch negatives are the micro-batch's own, not gathered across ranks), so the loss is 0 and
    nothing trains."""
    if int(getattr(args, "num_negatives", 1)) == 0 and int(args.per_device_train_batch_size) == 1:
        raise ConfigError("num_negatives=0 with per_device_train_batch_size=1: each query's softmax would hold its "
                          "positive alone (in-batch negatives come from the same micro-batch), so the loss is 0 and "
                          "nothing trains; raise per_device_train_batch_size or set num_negatives > 0")


__all__ = ["refuse_a_softmax_of_one", "seed_before_set_up", "warn_accumulation_is_not_a_bigger_batch"]


def default_metric_for_best_model(args: Any) -> None:
    """Default ``metric_for_best_model`` to ``ndcg@10`` where Trainer would default it to the eval loss
    (``load_best_model_at_end``, a plateau scheduler): :meth:`CorrectorTrainer.evaluate` reports retrieval metrics
    and no loss, so Trainer's default failed with KeyError 'eval_loss' at the first evaluation (and so did
    ``EarlyStoppingCallback``). The loss named explicitly is refused."""
    metric = args.metric_for_best_model
    if isinstance(metric, str) and metric.removeprefix("eval_") == "loss":
        raise ConfigError(f"metric_for_best_model={metric!r}: evaluate() reports no loss, only retrieval metrics "
                          f"(eval_ndcg@10, eval_recall@10, eval_recall@100, eval_mrr@10); use "
                          f"metric_for_best_model='ndcg@10'")
    scheduler = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    if metric is None and (args.load_best_model_at_end or scheduler in ("reduce_lr_on_plateau", "greedy")):
        logger.info("metric_for_best_model: ndcg@10 (evaluate() reports retrieval metrics, no loss)")
        args.metric_for_best_model = "ndcg@10"
