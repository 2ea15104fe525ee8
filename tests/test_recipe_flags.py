"""Recipe flags that were silently wrong or failed late (issue 23): abbreviated flags read as full ones, LoRA
target names with spaces (or a YAML list), and path flags that do not exist refused only after the data and the
model were loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from hf_corrector.errors import ConfigError
from tests.test_recipes import _recipe
from tests.tiny import tiny_retriever


@pytest.fixture(scope="module")
def recipe():
    return _recipe()


def _flags(tmp_path: Path, *extra: str) -> list[str]:
    return ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--use_cpu", "true", *extra]


@pytest.mark.parametrize("flag", [["--num_neg", "3"], ["--serve_reencode", "0.5"], ["--skip_initial", "true"]],
                         ids=lambda f: f[0])
def test_an_abbreviated_flag_is_an_error_not_the_full_flag(recipe, tmp_path, flag):
    with pytest.raises(ValueError, match=rf"not used.*{flag[0]}"):
        recipe.parse_arguments(_flags(tmp_path, *flag))


def test_lora_target_names_are_stripped_and_a_yaml_list_works(recipe, tmp_path):
    assert recipe.lora_modules("query, value") == ["query", "value"]
    config = tmp_path / "c.yaml"
    config.write_text("use_lora: true\nlora_target_modules: [query, value]\n")
    model_args, _, _ = recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])
    assert recipe.lora_modules(model_args.lora_target_modules) == ["query", "value"]
    encoder = tiny_retriever(tmp_path).encoder
    recipe.check_lora_modules(encoder, ["query", "value"])
    with pytest.raises(ConfigError, match=r"'valeu' names no module of the encoder.*'query'"):
        recipe.check_lora_modules(encoder, ["query", "valeu"])


@pytest.mark.parametrize("flag", ["--corrector_name_or_path", "--cache_path"])
def test_a_missing_local_path_is_refused_before_any_work(recipe, tmp_path, monkeypatch, flag):
    def no_work(*args, **kwargs):
        raise AssertionError("data was loaded before the flags were checked")

    monkeypatch.setattr(recipe, "load_data", no_work)
    with pytest.raises(ConfigError, match=rf"^{flag}: no such folder"):
        recipe.main(_flags(tmp_path, flag, str(tmp_path / "missing")))
    with pytest.raises(ConfigError, match=rf"^{flag} must be a folder or a Hub id"):
        recipe.main(_flags(tmp_path, flag, " "))


@pytest.mark.parametrize("flags, match", [
    (["--eval_split", "null", "--max_eval_queries", "3"], "no evaluation to cap"),
    (["--eval_split", "None"], "for no evaluation write null"),
    (["--data_path", "stdlib", "--eval_split", "dev"], "'test' split only"),
], ids=["cap-without-eval", "None-string", "stdlib-split"])
def test_eval_flags_that_were_silently_ignored_are_refused(recipe, tmp_path, monkeypatch, flags, match):
    monkeypatch.setattr(recipe, "load_data", lambda *a, **k: pytest.fail("data loaded before the flags were checked"))
    with pytest.raises(ConfigError, match=match):
        recipe.main(_flags(tmp_path, *flags))


def test_yaml_booleans_read_as_on_the_command_line(recipe, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("normalize: 1\nskip_initial_eval: 0\n")
    model_args, data_args, _ = recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])
    assert model_args.normalize is True and data_args.skip_initial_eval is False
    cli, cli_data, _ = recipe.parse_arguments(_flags(tmp_path, "--normalize", "1", "--skip_initial_eval", "0"))
    assert (cli.normalize, cli_data.skip_initial_eval) == (True, False)
    config.write_text("use_lora: 2\n")
    with pytest.raises(ConfigError, match=r"use_lora: 2 is not a boolean"):
        recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])
