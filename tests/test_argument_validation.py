"""Arguments never train garbage: every numeric argument is validated at construction (issue 13).

* every numeric field of :class:`CorrectorTrainingArguments` has a :class:`Spec` (a new field without one fails);
* the issue's named examples raise :class:`ConfigError` naming the argument, the value and the range;
* property-based: any drawn value for any validated field either raises at construction, or a trainer built with it
  runs an optimizer step with a finite loss;
* a query whose positives leave fewer than ``num_negatives`` candidates is named at construction.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import TrainerCallback, TrainingArguments

from hf_corrector import CorrectorTrainer, RetrievalData
from hf_corrector.errors import ConfigError
from hf_corrector.training.config import CorrectorTrainingArguments
from hf_corrector.training.validation import (ARGUMENT_SPECS, INHERITED_SPECS, LIBRARY_SPECS, Spec,
                                              check_enough_negatives, numeric_fields, validate_arguments)
from tests.tiny import TINY_TRAINING_DEFAULTS, tiny_retriever, tiny_trainer

BASE_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments)}
FIELDS = [name for name in sorted(ARGUMENT_SPECS)
          if name in {f.name for f in dataclasses.fields(CorrectorTrainingArguments)}]
#: specs for fields that only some supported transformers versions have
VERSION_DEPENDENT = {"warmup_ratio"}


@pytest.fixture(autouse=True)
def one_torch_thread(one_thread):
    """Tiny models run fastest on one thread (see conftest.one_thread)."""


def make_args(out: str | Path, **overrides) -> CorrectorTrainingArguments:
    return CorrectorTrainingArguments(str(out), **{**TINY_TRAINING_DEFAULTS, **overrides})


# -- coverage of the specs --------------------------------------------------------------------------------------------
def test_every_numeric_field_has_a_spec():
    numeric = set(numeric_fields(CorrectorTrainingArguments))
    assert len(numeric) >= 53  # 28 inherited (transformers 5.x) + 25 of ours at the time of writing
    assert numeric - set(ARGUMENT_SPECS) == set(), "numeric fields without a Spec in validation.py"
    ours = numeric - BASE_FIELDS
    assert ours <= set(LIBRARY_SPECS), f"library fields specced as inherited: {ours - set(LIBRARY_SPECS)}"
    assert not set(LIBRARY_SPECS) & BASE_FIELDS
    assert set(ARGUMENT_SPECS) - numeric <= VERSION_DEPENDENT  # no stale spec for a field that was removed


def test_a_new_numeric_field_without_a_spec_is_detected():
    @dataclasses.dataclass
    class Extended(CorrectorTrainingArguments):
        corrector_new_knob: float = 1.0
        corrector_new_count: int | None = None
        corrector_new_flag: bool = False

    missing = set(numeric_fields(Extended)) - set(ARGUMENT_SPECS)
    assert missing == {"corrector_new_knob", "corrector_new_count"}


# -- the named examples (each trained on, or crashed late, before validation) ---------------------------------
NAMED = [
    ("temperature", math.nan),
    ("sampling_temperature", math.nan),
    ("corrector_learning_rate", math.nan),
    ("corrector_mse_weight", math.nan),
    ("learning_rate", -1e-3),
    ("corrector_mse_weight", -1.0),
    ("temperature", math.inf),
    ("temperature", 1e-30),
    ("sampling_temperature", 1e-30),
    ("corrector_chunk_size", -1),
    ("corrector_chunk_size", 0),
    ("per_device_train_batch_size", 0),
    ("cache_encode_batch_size", 0),
    ("eval_batch_size_encode", 0),
    ("gradient_accumulation_steps", 0),
    ("num_negatives", 2.5),
    ("num_negatives", 3.0),
    ("corrector_num_layers", "2"),
    ("cache_refresh_steps", "10"),
    ("per_device_train_batch_size", True),
    ("seed", -1),
    ("max_steps", 0),
    ("max_grad_norm", math.nan),
    ("neftune_noise_alpha", 5.0),
    ("label_smoothing_factor", 0.1),
]


@pytest.mark.parametrize("name,value", NAMED, ids=[f"{n}={v!r}" for n, v in NAMED])
def test_named_bad_value_is_refused_at_construction(tmp_path, name, value):
    with pytest.raises(ConfigError) as info:
        make_args(tmp_path, **{name: value})
    message = str(info.value)
    assert message.startswith(f"{name}={value!r} is invalid"), message
    assert ARGUMENT_SPECS[name].describe() in message  # the allowed range


def test_messages_give_the_range():
    with pytest.raises(ConfigError, match=re.escape("temperature=inf is invalid (not finite): expected a finite "
                                                    "number in [0.0001, 100]")):
        make_args("unused", temperature=math.inf)
    with pytest.raises(ConfigError, match=re.escape("corrector_chunk_size=-1 is invalid (out of range): expected an "
                                                    "integer in [1, inf)")):
        make_args("unused", corrector_chunk_size=-1)
    with pytest.raises(ConfigError, match=re.escape("max_steps=0 is invalid (out of range): expected an integer in "
                                                    "[1, inf) or -1")):
        make_args("unused", max_steps=0)
    with pytest.raises(ConfigError, match="dataloader_prefetch_factor=2 needs dataloader_num_workers > 0"):
        make_args("unused", dataloader_prefetch_factor=2)


def test_string_in_a_field_transformers_compares_is_a_config_error():
    """transformers' own __post_init__ raises TypeError on these; validation runs first."""
    for name in ("logging_steps", "save_steps", "warmup_steps", "dataloader_num_workers"):
        with pytest.raises(ConfigError, match=f"^{name}='5' is invalid"):
            make_args("unused", **{name: "5"})


@pytest.mark.parametrize("name,value,stored", [
    ("logging_steps", 5.0, 5), ("warmup_steps", 0.25, 0.25), ("max_steps", -1, -1), ("temperature", 1, 1),
    ("temperature", 1e-4, 1e-4), ("temperature", 100.0, 100.0), ("tele_momentum_weight", 0, 0),
    ("learning_rate", 0.0, 0.0), ("query_max_length", None, None), ("save_total_limit", 0, 0),
])
def test_boundary_and_integral_values_are_accepted(tmp_path, name, value, stored):
    args = make_args(tmp_path, **{name: value})
    assert getattr(args, name) == stored


def test_validate_arguments_works_on_any_object():
    class Plain:
        temperature = 0.05
        num_negatives = -2

    with pytest.raises(ConfigError, match=re.escape("num_negatives=-2 is invalid (out of range)")):
        validate_arguments(Plain())
    assert Spec("int", 1).problem(2) is None and Spec("int", 1).problem(2.0) == "float is not an integer"
    assert Spec("steps", 0, low_inclusive=False).problem(2.5) == "a step count >= 1 must be integral"


# -- property-based: refused at construction, or one finite optimizer step ------------------------------------------
class _StopAfterOneStep(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = True
        return control


BAD_VALUES = [math.nan, math.inf, -math.inf, 0, 0.0, -1, -0.5, -(10**9), 10**12, 1e300, 1e-300, 2.5, 3.0, 1, 0.5,
              "3", "abc", "", None, True, False, [1]]


def _valid_values(spec: Spec) -> st.SearchStrategy:
    """Values inside the spec (near its lower end for counts, so that a trainer step stays tiny)."""
    if spec.unsupported:
        return st.sampled_from(list(spec.special) + ([None] if spec.optional else []))
    low = -1 if spec.special else (spec.low if spec.low is not None else -10)
    if spec.kind == "int":
        high = low + 40 if spec.high is None else min(spec.high, low + 40)
        return st.integers(int(math.ceil(low)), int(high))
    high = spec.high if spec.high is not None else 1e6
    floats = st.floats(low, high, exclude_min=not spec.low_inclusive, exclude_max=not spec.high_inclusive,
                       allow_nan=False)
    if spec.kind == "steps":
        return st.one_of(st.integers(max(1, int(low)), 50), floats.filter(lambda x: x < 1))
    return floats


@st.composite
def field_and_value(draw) -> tuple[str, object]:
    name = draw(st.sampled_from(FIELDS))
    spec = ARGUMENT_SPECS[name]
    value = draw(st.one_of(st.sampled_from(BAD_VALUES), _valid_values(spec),
                           st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)))
    return name, value


#: a method's own fields are drawn with that method switched on (otherwise they would be inert)
METHOD_CONTEXT = {"nystrom_": {"correction": "nystrom"}, "tele_": {"correction": "none", "tele_negatives": True},
                  "candidate_": {"candidate_index": "ivf", "num_negatives": 3}}


def _context(name: str) -> dict:
    return next((ctx for prefix, ctx in METHOD_CONTEXT.items() if name.startswith(prefix)), {})


#: accepted values of these fields are checked at construction only (no step): a step with N worker processes would
#: start N processes on a small shared machine
NO_STEP = {"dataloader_num_workers": lambda v: v > 1}


@settings(max_examples=160, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field_and_value())
def test_any_value_is_refused_or_trains_one_finite_step(drawn):
    name, value = drawn
    spec = ARGUMENT_SPECS[name]
    with tempfile.TemporaryDirectory() as tmp:
        try:
            args = make_args(Path(tmp) / "out", **{**_context(name), name: value})
        except ConfigError as err:
            assert str(err).startswith(f"{name}=") or name in str(err), str(err)
            assert spec.problem(value) is not None or name == "dataloader_prefetch_factor"
            return
        except ValueError as err:  # transformers' own checks (inherited fields only)
            assert name in INHERITED_SPECS, f"{name}={value!r}: ValueError instead of ConfigError: {err}"
            return
        assert spec.problem(value) is None  # an accepted value is one the spec allows
        if name in NO_STEP and NO_STEP[name](value):
            return
        try:
            trainer = tiny_trainer(Path(tmp), **{**_context(name), name: value})
        except ConfigError as err:  # refused when the trainer is built (e.g. num_negatives >= corpus size)
            assert name in str(err), str(err)
            return
        trainer.add_callback(_StopAfterOneStep())
        out = trainer.train()
        assert trainer.state.global_step == 1
        assert math.isfinite(out.training_loss) and out.training_loss > 0, (name, value, out.training_loss)
        assert args is not None


# -- a query whose positives leave fewer than k candidates ------------------------------------------------------------
def _data_with_a_crowded_query() -> RetrievalData:
    docs = [{"doc_id": f"d{i}", "text": f"cell protein w{i} gene"} for i in range(10)]
    queries = [{"query_id": f"q{i}", "query": f"protein w{i}", "positive_ids": [f"d{i}"]} for i in range(8)]
    queries.append({"query_id": "q-crowded", "query": "cell gene", "positive_ids": [f"d{i}" for i in range(8)]})
    return RetrievalData.from_records(queries, docs, name="crowded")


def test_check_enough_negatives_names_the_query():
    data = _data_with_a_crowded_query()
    check_enough_negatives(data.queries, num_docs=10, k=2)  # 10 - 8 positives = 2 candidates: enough
    with pytest.raises(ConfigError, match=re.escape("query 'q-crowded' has 2 candidate(s) (of 10 documents, 8 "
                                                    "positive)")) as info:
        check_enough_negatives(data.queries, num_docs=10, k=3)
    assert "num_negatives=3" in str(info.value) and "'q0'" not in str(info.value)
    rows = [{"query_id": "a", "positive_rows": [0, 1, 1]}, {"query_id": "b", "positive_rows": [2]}]
    check_enough_negatives(rows, num_docs=4, k=2)  # duplicates count once: 'a' has 2 candidates
    with pytest.raises(ConfigError, match="query 'a' has 2 candidate"):
        check_enough_negatives(rows, num_docs=4, k=3)
    many = [{"query_id": f"x{i}", "positive_ids": ["d"]} for i in range(9)]
    with pytest.raises(ConfigError, match="and 4 more"):
        check_enough_negatives(many, num_docs=3, k=3)


def test_candidate_pool_that_positives_crowd_out_names_the_query(tmp_path):
    """Before: candidate_pool_size=3 passed (>= num_negatives=3) and step 1 failed with "candidate pool of 3 is too
    small" without naming a query. Every tiny query has one positive, so a pool of 3 leaves 2 candidates."""
    check_enough_negatives([{"query_id": "q", "positive_ids": ["d1"]}], num_docs=120, k=3, pool_size=4)
    with pytest.raises(ConfigError, match=re.escape("query 'q0' has 2 candidate(s) (of a candidate pool of 3 rows, "
                                                    "1 positive); query 'q1' has 2")) as info:
        tiny_trainer(tmp_path, candidate_index="flat", candidate_pool_size=3, num_negatives=3)
    assert "and 31 more" in str(info.value) and "raise candidate_pool_size" in str(info.value)  # 36 queries


def test_trainer_refuses_a_crowded_query_at_construction(tmp_path):
    """Before: the trainer was built and step 1 failed in select_negatives without naming the query."""
    args = make_args(tmp_path / "out", num_negatives=3, per_device_train_batch_size=9)
    with pytest.raises(ConfigError, match="query 'q-crowded' has 2 candidate"):
        CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=_data_with_a_crowded_query())
