"""Validation of :class:`~hf_corrector.training.config.CorrectorTrainingArguments` and of the training data's fit.

Every numeric argument has one :class:`Spec` in :data:`ARGUMENT_SPECS`: its kind (``int``, ``float`` or ``steps``),
its range and whether ``None`` is allowed. :func:`validate_arguments` checks each field against its spec and raises
:class:`~hf_corrector.errors.ConfigError` naming the argument, the value and the allowed range. A test asserts that
every numeric field of the dataclass has a spec, so a new field cannot slip through unchecked.

Kinds follow the declared type of the field:

* ``int``: an integer (``numbers.Integral``, so numpy integers pass). ``bool`` is refused, and so is every float,
  even an integral one such as ``3.0``: these are counts and sizes, and a float there is almost always a computed
  value that went wrong (``7 / 2``).
* ``float``: any finite real number (ints included), never ``bool``, NaN or +-inf.
* ``steps``: transformers' "count or fraction" fields (``logging_steps``, ``save_steps``, ``eval_steps``,
  ``warmup_steps``): a value ``>= 1`` must be integral (``10`` or ``10.0``; transformers converts the latter), a
  value below 1 is a fraction of the run.

Strings are refused everywhere (``HfArgumentParser`` converts command-line strings before construction).

Why the temperature range is ``[1e-4, 100]``: logits are ``score / temperature`` and scores are cosine similarities
in ``[-1, 1]``, so ``|logit| <= 1 / temperature``. At ``1e-4`` logits stay within ``1e4``, and differences of two
logits within ``2e4``: below float16's maximum (65504), so the loss cannot overflow even under fp16 autocast
(float32 and bfloat16 have more range). Below ``~1.5e-5`` a single fp16 logit overflows, and below ``~3e-39``
``1 / temperature`` itself is ``inf`` in float32. Above 100 the logits of all candidates lie within ``0.02`` of one
another: the softmax is uniform to within 2 % and its gradient, which scales with ``1 / temperature``, is nearly 0
(an infinite temperature trains nothing at all).

Example:
    >>> validate_arguments(args)  # doctest: +SKIP
    >>> check_enough_negatives(train_examples, num_docs=len(corpus), k=args.num_negatives)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any, Literal

from ..errors import ConfigError

logger = logging.getLogger(__name__)

INF = math.inf
MAX_SEED = 2**32 - 1  # numpy's seed range (transformers.set_seed seeds numpy)
MAX_TOKENS = 2**20  # token lengths beyond this are typos, not models
TEMPERATURE_RANGE = (1e-4, 100.0)  # see the module docstring


@dataclass(frozen=True)
class Spec:
    """What one numeric argument accepts.

    Attributes:
        kind: ``"int"``, ``"float"`` or ``"steps"`` (see the module docstring).
        low, high: bounds (``None`` = unbounded on that side); ``low_inclusive`` / ``high_inclusive`` say whether
            the bound itself is allowed.
        optional: ``None`` is allowed (it means "use the default behaviour").
        special: exact values allowed outside the range, with their meaning (``max_steps=-1``: use epochs).
        unsupported: if set, the option is not supported by :class:`CorrectorTrainer`: only the ``special`` values
            (and ``None`` if ``optional``) are accepted, and this is the reason given.
    """

    kind: Literal["int", "float", "steps"]
    low: float | None = None
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    optional: bool = False
    special: tuple[Any, ...] = ()
    unsupported: str | None = None

    def describe(self) -> str:
        """The allowed values in words, e.g. ``an integer in [1, inf)`` or ``None``."""
        if self.unsupported:
            allowed = [repr(v) for v in self.special] + (["None"] if self.optional else [])
            return f"{' or '.join(allowed)} ({self.unsupported})"
        noun = {"int": "an integer", "float": "a finite number",
                "steps": "a finite number (integral if >= 1, a fraction of the run if < 1)"}[self.kind]
        low = "-inf" if self.low is None else _fmt(self.low)
        high = "inf" if self.high is None else _fmt(self.high)
        text = f"{noun} in {'[' if self.low_inclusive and self.low is not None else '('}{low}, " \
               f"{high}{']' if self.high_inclusive and self.high is not None else ')'}"
        if self.special:
            text += " or " + " or ".join(repr(v) for v in self.special)
        if self.optional:
            text += " or None"
        return text

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or ``None`` when it is."""
        if value is None:
            return None if self.optional else "None is not allowed"
        if self.unsupported:
            ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and value in self.special
            return None if ok else "not supported"
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return f"{type(value).__name__} is not a number"
        if self.kind == "int" and not isinstance(value, numbers.Integral):
            return f"{type(value).__name__} is not an integer"
        if not math.isfinite(value):
            return "not finite"
        if value in self.special:
            return None
        if self.kind == "steps" and value >= 1 and value != int(value):
            return "a step count >= 1 must be integral"
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return "out of range"
        if self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)):
            return "out of range"
        return None


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _int(low: int | None = None, high: int | None = None, **kw: Any) -> Spec:
    return Spec("int", low, high, **kw)


def _float(low: float | None = None, high: float | None = None, **kw: Any) -> Spec:
    return Spec("float", low, high, **kw)


def _positive(**kw: Any) -> Spec:
    return Spec("float", 0.0, None, low_inclusive=False, **kw)


#: numeric fields that hf_corrector adds
LIBRARY_SPECS: dict[str, Spec] = {
    "num_negatives": _int(0),
    "sampling_temperature": _float(*TEMPERATURE_RANGE),
    "temperature": _float(*TEMPERATURE_RANGE),
    "query_max_length": _int(1, MAX_TOKENS, optional=True),
    "target_max_length": _int(1, MAX_TOKENS, optional=True),
    "corrector_mse_weight": _float(0.0, 1e3),  # weighs an MSE of unit vectors (<= 4) against a CE of O(log k)
    "corrector_learning_rate": _float(0.0, 1.0, low_inclusive=False),
    "corrector_warmup_steps": _int(0),
    "corrector_hidden_dim": _int(1, 2**16, optional=True),  # 16x the widest common embedding (4096)
    "corrector_num_layers": _int(1, 64),
    "corrector_chunk_size": _int(1),
    "corrector_fallback_patience": _int(0),
    "cache_refresh_steps": _int(0),
    "cache_encode_batch_size": _int(1),
    "nystrom_landmarks": _int(1),
    "nystrom_ridge": _float(0.0, 1e4),
    "nystrom_rank": _int(1, optional=True),
    "nystrom_refit_steps": _int(1),
    "tele_pool_size": _int(1),
    "tele_momentum_weight": _float(0.0, 1.0),
    "tele_lookahead_weight": _float(0.0, 1.0),
    "tele_pool_steps": _int(0),
    "candidate_pool_size": _int(1),
    "false_negative_skip_top": _int(0),
    "false_negative_margin": _float(0.0, 1.5, low_inclusive=False, optional=True),  # a fraction of the positive's score
    "false_negative_max_score": _float(-1e4, 1e4, optional=True),  # scores of unit vectors are in [-1, 1]
    "candidate_nprobe": _int(1),
    "eval_batch_size_encode": _int(1, optional=True),
    "corrected_view_steps": _int(0),
    "tree_num_clusters": _int(1, optional=True),
    "tree_probe_mass": _float(0.0, 1e6, low_inclusive=False),
    "tree_max_probe": _int(1),
    "tree_rebuild_radius_factor": _float(1.0, 1e6, low_inclusive=False),
    "reader_temperature": _float(1e-4, 1e4, low_inclusive=True),
    "reader_learning_rate": _float(0.0, 1.0, low_inclusive=False, optional=True),
    "reader_batch_size": _int(1),
    "reader_passage_max_length": _int(1, MAX_TOKENS),
    "reader_eval_passages": _int(1),
}

#: numeric fields inherited from transformers.TrainingArguments
INHERITED_SPECS: dict[str, Spec] = {
    "per_device_train_batch_size": _int(1),
    "per_device_eval_batch_size": _int(1),
    "gradient_accumulation_steps": _int(1),
    "eval_accumulation_steps": _int(1, optional=True),
    "num_train_epochs": _positive(),
    "max_steps": _int(1, special=(-1,)),  # -1: train for num_train_epochs
    "learning_rate": _float(0.0, 1.0),  # 0 freezes the encoders (the corrector has its own rate)
    "weight_decay": _float(0.0, 1.0),
    "adam_beta1": _float(0.0, 1.0, high_inclusive=False),
    "adam_beta2": _float(0.0, 1.0, high_inclusive=False),
    "adam_epsilon": _float(0.0, 1.0, low_inclusive=False),
    "max_grad_norm": _float(0.0),  # 0 = no clipping
    "label_smoothing_factor": _float(special=(0.0,), unsupported="CorrectorTrainer computes its own contrastive "
                                                                 "loss; Trainer's label smoother does not apply"),
    "warmup_steps": Spec("steps", 0.0),
    "warmup_ratio": _float(0.0, 1.0, optional=True),  # older transformers only
    "logging_steps": Spec("steps", 0.0, low_inclusive=False),
    "save_steps": Spec("steps", 0.0, low_inclusive=False),
    "eval_steps": Spec("steps", 0.0, low_inclusive=False, optional=True),
    "eval_delay": _float(0.0),
    "save_total_limit": _int(0, optional=True),  # None or 0: keep every checkpoint
    "seed": _int(0, MAX_SEED),
    "data_seed": _int(0, MAX_SEED, optional=True),
    "dataloader_num_workers": _int(0, 256),
    "dataloader_prefetch_factor": _int(1, optional=True),
    "torch_empty_cache_steps": _int(1, optional=True),
    "ddp_bucket_cap_mb": _int(1, optional=True),
    "ddp_timeout": _int(1, 10**8),  # seconds; ~3 years (far larger values overflow datetime.timedelta)
    "local_rank": _int(-1, 2**16),
    "neftune_noise_alpha": _float(optional=True, unsupported="CorrectorTrainer's model has no input embeddings to "
                                                             "add NEFTune noise to"),
}

ARGUMENT_SPECS: dict[str, Spec] = {**LIBRARY_SPECS, **INHERITED_SPECS}


@dataclass(frozen=True)
class Rule:
    """A check across fields: ``ok(args)`` must hold, else ``message.format(args=args)``."""

    fields: tuple[str, ...]
    ok: Any
    message: str


CROSS_FIELD_RULES: tuple[Rule, ...] = (
    Rule(("dataloader_prefetch_factor", "dataloader_num_workers"),
         lambda a: a.dataloader_prefetch_factor is None or a.dataloader_num_workers > 0,
         "dataloader_prefetch_factor={args.dataloader_prefetch_factor} needs dataloader_num_workers > 0 "
         "(got {args.dataloader_num_workers})"),
    Rule(("include_num_input_tokens_seen",),
         lambda a: a.include_num_input_tokens_seen in (False, None, "no"),
         "include_num_input_tokens_seen={args.include_num_input_tokens_seen!r}: CorrectorTrainer's batches hold "
         "query and document token tensors, not the input_ids Trainer counts, so num_input_tokens_seen would stay 0; "
         "leave it 'no' (trainer.cost counts the corpus encodings spent)"),
)


def validate_arguments(args: Any) -> None:
    """Check every numeric field of ``args`` that has a :class:`Spec` (type, finiteness, sign, range), then the
    cross-field rules. Raises :class:`~hf_corrector.errors.ConfigError` naming the argument, the value and what is
    allowed. Fields the object does not have are skipped (older transformers versions)."""
    for name, spec in ARGUMENT_SPECS.items():
        if not hasattr(args, name):
            continue
        value = getattr(args, name)
        problem = spec.problem(value)
        if problem is not None:
            raise ConfigError(f"{name}={value!r} is invalid ({problem}): expected {spec.describe()}")
        if spec.kind == "float" and isinstance(value, numbers.Integral) and not isinstance(value, bool):
            setattr(args, name, float(value))  # YAML's `adam_beta1: 0` is an int; torch wants floats
    for rule in CROSS_FIELD_RULES:
        if all(hasattr(args, f) for f in rule.fields) and not rule.ok(args):
            raise ConfigError(rule.message.format(args=args))


def numeric_fields(cls: type) -> list[str]:
    """The dataclass fields of ``cls`` whose declared type involves ``int`` or ``float`` (``bool`` excluded)."""
    import typing

    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        kinds = set(typing.get_args(hints[f.name])) or {hints[f.name]}
        if kinds & {int, float}:
            out.append(f.name)
    return out


def check_enough_negatives(examples_or_queries: Any, num_docs: int, k: int, pool_size: int | None = None,
                           max_listed: int = 5, skip_top: int = 0) -> None:
    """Raise :class:`~hf_corrector.errors.ConfigError` naming every query (the first ``max_listed``) whose positives
    leave fewer than ``k`` negative candidates.

    The candidates of a query are the ``num_docs`` documents, or with two-stage selection the ``pool_size`` rows its
    index search returns, minus its positives (assumed to be in the pool: they are what the query scores highest).

    ``examples_or_queries``: a queries dataset (``query_id``, ``positive_ids``), the trainer's examples
    (``query_id``, ``positive_rows``) or any iterable of such mappings. Each query counts once.
    """
    if k <= 0:
        return
    wanted = f"num_negatives={k}" + (f" + false_negative_skip_top={skip_top}" if skip_top else "")
    k += skip_top
    available = num_docs if pool_size is None else min(num_docs, pool_size)
    where = f"of {num_docs} documents" if available == num_docs else f"of a candidate pool of {available} rows"
    short: dict[str, tuple[int, int]] = {}
    for qid, positives in _query_positives(examples_or_queries):
        n_pos = len(set(positives))
        if available - n_pos < k and str(qid) not in short:
            short[str(qid)] = (max(available - n_pos, 0), n_pos)
    if short:
        listed = "; ".join(f"query {qid!r} has {c} candidate(s) ({where}, {p} positive)"
                           for qid, (c, p) in list(short.items())[:max_listed])
        more = f"; and {len(short) - max_listed} more" if len(short) > max_listed else ""
        lower = "Lower num_negatives" + (" or false_negative_skip_top" if skip_top else "")
        fix = f"{lower} or add documents to the corpus" if pool_size is None else f"{lower} or raise candidate_pool_size"
        raise ConfigError(f"{wanted} needs at least {k} negative candidates per query, but {listed}{more}. {fix}.")


def _query_positives(data: Any) -> Iterable[tuple[Any, list]]:
    column_names = getattr(data, "column_names", None)
    if column_names is not None:  # a datasets.Dataset: read two columns, not row dicts
        key = "positive_rows" if "positive_rows" in column_names else "positive_ids"
        return zip(data["query_id"], data[key])
    return ((row["query_id"], row["positive_rows"] if "positive_rows" in row else row["positive_ids"])
            for row in data)


__all__ = ["ARGUMENT_SPECS", "CROSS_FIELD_RULES", "INHERITED_SPECS", "LIBRARY_SPECS", "Rule", "Spec",
           "check_enough_negatives", "numeric_fields", "validate_arguments"]
