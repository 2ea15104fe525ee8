"""The recipe checks every flag before any work, reads `null` on the command line as YAML does, and its --help starts
with what it does and lists --config and the library's flags first (issue 23)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hf_corrector.errors import ConfigError
from tests.test_recipes import ROOT, _recipe


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


def _flags(tmp_path: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true", *extra]


@pytest.mark.parametrize("flags, match", [
    (["--serve_reencode_budget", "5"], "serve_reencode_budget.*fraction"),
    (["--serve_reencode_budget", "nan"], "serve_reencode_budget"),
    (["--serve_reencode_budget", "-0.1"], "serve_reencode_budget"),
    (["--num_hidden_layers", "0"], "num_hidden_layers must be a positive integer"),
    (["--num_hidden_layers", "-2"], "num_hidden_layers"),
    (["--max_eval_queries", "0"], "max_eval_queries"),
    (["--lora_r", "0"], "lora_r"),
    (["--pooling", "avg"], "pooling must be one of"),
    (["--data_format", "xml"], "data_format must be one of"),
], ids=lambda v: v if isinstance(v, str) else " ".join(v))
def test_bad_flags_are_refused_before_any_work(recipe, tmp_path, monkeypatch, flags, match):
    def no_work(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    monkeypatch.setattr(recipe, "load_data", no_work)
    with pytest.raises(ConfigError, match=match):
        recipe.main(_flags(tmp_path, *flags))


def test_null_on_the_command_line_is_none_as_in_yaml(recipe, tmp_path):
    model_args, data_args, args = recipe.parse_arguments(_flags(
        tmp_path, "--eval_split", "null", "--max_eval_queries", "null", "--serve_reencode_budget", "null",
        "--corpus_path", "NULL", "--normalize", "null", "--pooling", "~", "--num_hidden_layers", "null"))
    assert data_args.eval_split is None and data_args.max_eval_queries is None
    assert data_args.serve_reencode_budget is None and data_args.corpus_path is None
    assert model_args.normalize is None and model_args.pooling is None and model_args.num_hidden_layers is None
    # the same through a YAML file
    config = tmp_path / "c.yaml"
    config.write_text("eval_split: null\nserve_reencode_budget: null\nnormalize: null\n")
    _, data_args, _ = recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])
    assert data_args.eval_split is None and data_args.serve_reencode_budget is None
    # values that are not null are parsed as before
    model_args, data_args, _ = recipe.parse_arguments(_flags(tmp_path, "--data_path", "data/train.jsonl",
                                                             "--eval_split", "dev", "--normalize",
                                                             "false", "--serve_reencode_budget", "0.1"))
    assert data_args.eval_split == "dev" and model_args.normalize is False and data_args.serve_reencode_budget == 0.1
    _, _, args = recipe.parse_arguments(_flags(tmp_path))  # "none" keeps its meaning where it has one
    assert args.report_to in ([], "none", ["none"]), args.report_to


def test_help_starts_with_what_the_recipe_does_and_lists_config_and_library_flags_first():
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--help"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("usage: python recipes/train.py [--config FILE.yaml]") and len(lines[0]) < 120
    assert lines[1].startswith("Train a dense retriever with hf-corrector")
    positions = [out.index(flag) for flag in ("\n  --config", "\n  --model_name_or_path", "\n  --data_path",
                                              "\n  --num_negatives", "\n  --correction ", "\n  --per_device_train_batch_size",
                                              "\n  --learning_rate")]
    assert positions == sorted(positions), positions
