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
    (["--eval_split", "None", "--max_eval_queries", "3"], "no evaluation to cap"),
    (["--data_path", "stdlib", "--eval_split", "dev"], "'test' split only"),
    (["--data_path", "stdlib", "--train_split", "dev"], "--train_split 'dev' is not read with --data_path stdlib"),
    (["--data_path", "stdlib", "--corpus_path", "org/corpus"], "--corpus_path 'org/corpus' is not read"),
    (["--data_path", "stdlib", "--data_format", "beir"], "--data_format 'beir' is not read"),
    (["--correction", "none", "--serve_reencode_budget", "0.2"],
     r"--serve_reencode_budget 0.2: .*--correction none trains no corrector"),
    (["--correction", "nystrom", "--serve_reencode_budget", "0.05"], "--correction nystrom trains no corrector"),
    (["--num_negatives", "0", "--serve_reencode_budget", "0.1"], "--num_negatives 0 .*trains no corrector"),
    (["--correction", "none", "--corrector_name_or_path", "org/corrector"],
     "--corrector_name_or_path 'org/corrector': --correction none trains no corrector"),
    (["--lora_target_modules", "query, value"], "--lora_target_modules is only read with --use_lora true"),
    (["--lora_r", "16"], "--lora_r is only read with --use_lora true"),
    (["--train_split", ""], "--train_split must be a non-empty name"),
    (["--eval_split", " "], "--eval_split must be a non-empty name"),
    (["--data_path", "data/x.jsonl", "--corpus_path", ""], "--corpus_path must be a non-empty name"),
    (["--model_name_or_path", "/missing/model"], "^--model_name_or_path: no such folder"),
], ids=["cap-without-eval", "cap-with-None", "stdlib-split", "stdlib-train-split", "stdlib-corpus",
        "stdlib-format", "serve-without-corrector", "serve-nystrom", "serve-no-negatives",
        "corrector-without-correction", "lora-modules-without-lora", "lora-r-without-lora", "empty-train-split",
        "blank-eval-split", "empty-corpus-path", "missing-model"])
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


def test_a_served_index_budget_from_yaml_without_a_corrector_is_refused(recipe, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("correction: none\nserve_reencode_budget: 0.2\n")
    with pytest.raises(ConfigError, match="--serve_reencode_budget 0.2"):
        recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])


def test_the_default_budget_and_null_are_accepted_without_a_corrector(recipe, tmp_path):
    """--correction none alone is a baseline run: the default served index is skipped (main says so), not refused."""
    _, data_args, args = recipe.parse_arguments(_flags(tmp_path, "--correction", "none"))
    assert args.correction == "none" and not recipe.trains_corrector(args) and data_args.serve_reencode_budget == 0.05
    _, data_args, _ = recipe.parse_arguments(_flags(tmp_path, "--correction", "none", "--serve_reencode_budget", "null"))
    assert data_args.serve_reencode_budget is None
    _, _, args = recipe.parse_arguments(_flags(tmp_path, "--serve_reencode_budget", "0.2"))
    assert recipe.trains_corrector(args)  # the default strategy trains one: the budget is kept
    model_args, _, _ = recipe.parse_arguments(_flags(tmp_path, "--use_lora", "true", "--lora_r", "4"))
    assert model_args.use_lora and model_args.lora_r == 4


@pytest.mark.parametrize("spelling", ["None", "none"])
def test_the_documented_none_spelling_means_null_on_the_command_line_and_in_yaml(recipe, tmp_path, spelling):
    model_args, data_args, args = recipe.parse_arguments(_flags(
        tmp_path, "--eval_split", spelling, "--serve_reencode_budget", spelling, "--normalize", spelling,
        "--correction", "none"))
    assert data_args.eval_split is None and data_args.serve_reencode_budget is None and model_args.normalize is None
    assert args.correction == "none"  # a library flag whose value is "none" keeps it
    config = tmp_path / "c.yaml"
    config.write_text(f"eval_split: {spelling}\nserve_reencode_budget: {spelling}\n")
    _, data_args, _ = recipe.parse_arguments(["--config", str(config), *_flags(tmp_path)])
    assert data_args.eval_split is None and data_args.serve_reencode_budget is None


def test_an_empty_eval_split_still_means_no_evaluation(recipe, tmp_path):
    _, data_args, _ = recipe.parse_arguments(_flags(tmp_path, "--eval_split", ""))
    assert recipe.load_data(data_args)[1] is None
