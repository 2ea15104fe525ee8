"""Argument choices are declared as dataclass metadata (``metadata={"choices": ...}``, as TRL declares its options):
the command line (``HfArgumentParser``) refuses a bad value naming the choices, and arguments built in Python are
checked against the same declaration in ``__post_init__``."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser

from hf_corrector import ConfigError, CorrectorTrainingArguments
from hf_corrector.training.config import CORRECTIONS, NEGATIVE_SAMPLING
from hf_corrector.training.reader_losses import READER_LOSSES


def test_choices_are_declared_in_the_field_metadata():
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(CorrectorTrainingArguments)}
    assert choices["negative_sampling"] == NEGATIVE_SAMPLING and choices["correction"] == CORRECTIONS
    assert choices["reader_loss"] == READER_LOSSES
    assert sum(c is not None for c in choices.values()) >= 11


def test_the_command_line_refuses_a_bad_choice(tmp_path, capsys):
    parser = HfArgumentParser(CorrectorTrainingArguments)
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--negative_sampling", "gumbell"])
    err = capsys.readouterr().err
    assert "--negative_sampling" in err and "invalid choice: 'gumbell'" in err and "'topk'" in err
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--negative_sampling", "gumbel",
                                                  "--report_to", "none"])
    assert args.negative_sampling == "gumbel"


@pytest.mark.parametrize("name, value", [("correction", "MLP"), ("reader_loss", "ppl"), ("cache_sharding", "shard")])
def test_python_arguments_are_checked_against_the_same_choices(tmp_path, name, value):
    with pytest.raises(ConfigError, match=rf"{name} must be one of \(.*\), got '{value}'"):
        CorrectorTrainingArguments(str(tmp_path), report_to=[], **{name: value})
