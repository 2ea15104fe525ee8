"""recipes/train.py: YAML + command-line parsing, every shipped config parses, and a full run on local files in
the Tevatron layouts (the NQ / MS MARCO recipes' loading code, without the Hub)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_corrector import CorrectorModel, RetrieverModel, StaleCache
from tests.tiny import tiny_data, tiny_retriever

ROOT = Path(__file__).resolve().parents[1]


def _recipe():
    spec = importlib.util.spec_from_file_location("recipe_train", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["recipe_train"] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "recipes" / "configs").glob("*.yaml")))
def test_every_config_parses(config: str, tmp_path: Path) -> None:
    model_args, data_args, args = _recipe().parse_arguments(
        ["--config", str(ROOT / "recipes" / "configs" / config), "--output_dir", str(tmp_path), "--use_cpu", "true",
         "--bf16", "false"]
    )
    assert args.output_dir == str(tmp_path)  # the command line overrides the file
    assert args.remove_unused_columns is False
    assert model_args.model_name_or_path and data_args.data_path


def test_nq_config_has_literature_settings(tmp_path: Path) -> None:
    _, data_args, args = _recipe().parse_arguments(
        ["--config", str(ROOT / "recipes/configs/nq.yaml"), "--output_dir", str(tmp_path), "--use_cpu", "true",
         "--bf16", "false"])
    assert data_args.data_path == "Tevatron/wikipedia-nq" and data_args.corpus_path == "Tevatron/wikipedia-nq-corpus"
    assert args.learning_rate == 1e-5 and args.num_train_epochs == 40


def _write_tevatron_id_layout(folder: Path) -> None:
    """Tevatron's newer id layout (queries with positive_document_ids + a corpus with docid/title/text)."""
    train, test = tiny_data(num_docs=60, num_queries=24)
    folder.mkdir()
    (folder / "corpus").mkdir()
    with open(folder / "corpus" / "train.jsonl", "w") as fh:
        for doc_id, text in zip(train.corpus["doc_id"], train.corpus["text"]):
            fh.write(json.dumps({"docid": doc_id, "title": "", "text": text}) + "\n")
    for split, data in (("train", train), ("dev", test)):
        with open(folder / f"{split}.jsonl", "w") as fh:
            for qid, q, pos in zip(data.queries["query_id"], data.queries["query"], data.queries["positive_ids"]):
                fh.write(json.dumps({"query_id": qid, "query": q, "positive_document_ids": pos,
                                     "negative_document_ids": []}) + "\n")


def test_full_run_on_local_tevatron_layout(tmp_path: Path) -> None:
    model_dir = tmp_path / "tiny-retriever"
    tiny_retriever(tmp_path).save_pretrained(model_dir)
    data_dir = tmp_path / "nq-like"
    _write_tevatron_id_layout(data_dir)
    out = tmp_path / "out"
    summary = _recipe().main([
        "--model_name_or_path", str(model_dir), "--data_path", str(data_dir / "train.jsonl"),
        "--corpus_path", str(data_dir / "corpus" / "train.jsonl"), "--eval_split", "", "--output_dir", str(out),
        "--max_steps", "6", "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--num_negatives", "3",
        "--use_cpu", "true", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ])
    assert summary["reembedding_cost"]["initial_cache_encodings"] == 60
    retriever = RetrieverModel.from_pretrained(out)
    corrector = CorrectorModel.from_pretrained(out, subfolder="corrector")
    cache = StaleCache.load(out / "stale_cache")
    assert len(cache) == 60 and cache.dim == retriever.embedding_dim == corrector.config.embedding_dim
    assert retriever.encode_queries(["cell protein"]).shape == (1, 32)
    assert json.loads((out / "results.json").read_text())["reembedding_cost"]["total"] > 60
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "sentence-transformers"  # the retriever is a sentence-transformers model
    assert "corrector" in ModelCard.load(out / "corrector" / "README.md").content.lower()
    assert "StaleCache.load" in (out / "stale_cache" / "README.md").read_text()


def _write_beir(tmp_path: Path) -> Path:
    """A tiny BEIR folder (60 documents, train/test qrels) in ``tmp_path / "beir"``."""
    train, test = tiny_data(num_docs=60, num_queries=24)
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    with open(beir / "corpus.jsonl", "w") as fh:
        for doc_id, text in zip(train.corpus["doc_id"], train.corpus["text"]):
            fh.write(json.dumps({"_id": doc_id, "title": "", "text": text}) + "\n")
    with open(beir / "queries.jsonl", "w") as fh:
        for data in (train, test):
            for qid, q in zip(data.queries["query_id"], data.queries["query"]):
                fh.write(json.dumps({"_id": qid, "text": q}) + "\n")
    for split, data in (("train", train), ("test", test)):
        with open(beir / "qrels" / f"{split}.tsv", "w") as fh:
            fh.write("query-id\tcorpus-id\tscore\n")
            for qid, pos in zip(data.queries["query_id"], data.queries["positive_ids"]):
                fh.writelines(f"{qid}\t{p}\t1\n" for p in pos)
    return beir


def test_full_run_with_eval_on_beir_folder(tmp_path: Path) -> None:
    """A BEIR folder with train/test qrels: before/after tables with stale, corrected and fresh embeddings."""
    beir = _write_beir(tmp_path)
    model_dir = tmp_path / "tiny-retriever"
    tiny_retriever(tmp_path).save_pretrained(model_dir)
    out = tmp_path / "out"
    summary = _recipe().main([
        "--model_name_or_path", str(model_dir), "--data_path", str(beir), "--output_dir", str(out),
        "--max_steps", "10", "--per_device_train_batch_size", "6", "--learning_rate", "1e-3", "--num_negatives", "3",
        "--use_cpu", "true", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
    ])
    after = summary["results"]["after training"]
    for key in ("eval_ndcg@10", "eval_stale_ndcg@10", "eval_corrected_ndcg@10", "eval_recall@100", "eval_mrr@10"):
        assert 0.0 <= after[key] <= 1.0
    before = summary["results"]["before training"]
    assert set(before) >= {"eval_ndcg@10", "eval_recall@100", "eval_mrr@10"}
    # training moved the encoder, so the fresh and the stale corpus now rank differently
    assert torch.tensor([after["eval_ndcg@10"] - after["eval_stale_ndcg@10"], after["eval_mrr@10"] -
                         after["eval_stale_mrr@10"]]).abs().sum() > 0


# -------------------------------------------------------------------------------------------------------------------
# issue 12: YAML configs the TrlParser way, resuming, two processes


def test_yaml_null_dicts_env_and_config_equals(tmp_path: Path, monkeypatch) -> None:
    """``null`` and dict values arrive as themselves, ``--config=path`` works, ``env:`` sets the environment and
    flags on the command line override the file (TRL's ``TrlParser`` semantics)."""
    monkeypatch.delenv("HFC_RECIPE_TEST_VAR", raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        "env:\n  HFC_RECIPE_TEST_VAR: 42\n"
        "eval_split: null\nmax_eval_queries: null\ncorpus_path: null\n"
        "lr_scheduler_type: cosine_with_min_lr\nlr_scheduler_kwargs: {min_lr: 1.0e-6}\n"
        "learning_rate: 3e-4\nnum_negatives: 5\nreport_to: none\nuse_cpu: true\n"
        f"output_dir: {tmp_path / 'from-file'}\n"
    )
    recipe = _recipe()
    model_args, data_args, args = recipe.parse_arguments([f"--config={config}"])
    assert data_args.eval_split is None and data_args.max_eval_queries is None and data_args.corpus_path is None
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-6} and str(args.lr_scheduler_type.value) == "cosine_with_min_lr"
    assert args.learning_rate == 3e-4 and args.num_negatives == 5 and args.output_dir == str(tmp_path / "from-file")
    assert __import__("os").environ["HFC_RECIPE_TEST_VAR"] == "42"

    _, data_args, args = recipe.parse_arguments(["--config", str(config), "--data_path", "data/train.jsonl", "--eval_split", "dev",
                                                 "--output_dir",
                                                 str(tmp_path / "cli"), "--lr_scheduler_kwargs", '{"min_lr": 2e-6}'])
    assert data_args.eval_split == "dev" and args.output_dir == str(tmp_path / "cli")
    assert args.lr_scheduler_kwargs == {"min_lr": 2e-6}

    config.write_text("no_such_argument: 1\nreport_to: none\n")
    with pytest.raises(ValueError, match="unknown argument.*no_such_argument"):
        recipe.parse_arguments(["--config", str(config), "--output_dir", str(tmp_path)])
    config.write_text("env: [A, B]\n")
    with pytest.raises(ValueError, match="env"):
        recipe.parse_arguments(["--config", str(config), "--output_dir", str(tmp_path)])


def _tiny_recipe_flags(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    model_dir = tmp_path / "tiny-retriever"
    if not model_dir.exists():
        tiny_retriever(tmp_path).save_pretrained(model_dir)
    beir = tmp_path / "beir" if (tmp_path / "beir").exists() else _write_beir(tmp_path)
    return ["--model_name_or_path", str(model_dir), "--data_path", str(beir), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-3", "--num_negatives", "3",
            "--report_to", "none", "--disable_tqdm", "true", "--logging_steps", "1", *extra]


def test_resume_from_checkpoint_true_uses_the_checkpoint_cache(tmp_path: Path, monkeypatch) -> None:
    """``--resume_from_checkpoint true`` (as the README says) resumes from the newest complete checkpoint, with the
    cache saved in it: the corpus is not encoded again."""
    recipe = _recipe()
    out = tmp_path / "out"
    first = recipe.main(_tiny_recipe_flags(tmp_path, out, "--use_cpu", "true", "--max_steps", "4", "--save_strategy",
                                           "steps", "--save_steps", "2", "--skip_initial_eval", "true"))
    assert first["reembedding_cost"]["initial_cache_encodings"] == 60 and first.get("resumed_from") is None
    assert (out / "checkpoint-4").is_dir()

    builds = []
    original_build = StaleCache.build.__func__

    def counting_build(cls, *args, **kwargs):
        builds.append(len(args[0]))
        return original_build(cls, *args, **kwargs)

    monkeypatch.setattr(StaleCache, "build", classmethod(counting_build))
    second = recipe.main(_tiny_recipe_flags(tmp_path, out, "--use_cpu", "true", "--max_steps", "6", "--save_strategy",
                                            "steps", "--save_steps", "2", "--resume_from_checkpoint", "true"))
    assert builds == [], "resuming encoded the whole corpus again"
    assert second["resumed_from"] == str(out / "checkpoint-4")
    assert second["reembedding_cost"]["initial_cache_encodings"] == 60  # restored from the checkpoint's counters
    assert json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["global_step"] == 6
    assert set(second["results"]) == {"after training"}  # no 'before training' pass over a restored cache

    from hf_corrector import ConfigError

    with pytest.raises(ConfigError, match="no complete checkpoint"):
        recipe.main(_tiny_recipe_flags(tmp_path, tmp_path / "empty", "--use_cpu", "true", "--max_steps", "2",
                                       "--resume_from_checkpoint", "true"))
    assert builds == []  # refused before any encoding


def _launch(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess:
    """The README's two-process command (accelerate launch + cpu_2proc.yaml + stdlib config) with tiny overrides."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", "0",
           str(ROOT / "recipes" / "train.py"), "--config", str(ROOT / "recipes" / "configs" / "stdlib_default.yaml"),
           *flags]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_cpu_2proc_config_runs_ddp(tmp_path: Path) -> None:
    """The shipped two-process CPU config and command give ONE distributed run (world size 2, gloo), and leaving out
    ``--use_cpu true`` (two independent trainings into one folder) is refused with the fix named."""
    out = tmp_path / "out"
    flags = _tiny_recipe_flags(tmp_path, out, "--max_steps", "2", "--skip_initial_eval", "true", "--eval_split", "")
    proc = _launch(tmp_path, *flags, "--use_cpu", "true")
    assert proc.returncode == 0, proc.stderr[-6000:]
    processes = json.loads((out / "results.json").read_text())["processes"]
    assert processes == {"num_processes": 2, "distributed": True, "distributed_type": "MULTI_CPU"}

    flags = [f for f in _tiny_recipe_flags(tmp_path, tmp_path / "out2", "--max_steps", "2", "--eval_split", "")]
    proc = _launch(tmp_path, *flags, "--use_cpu", "false")
    assert proc.returncode != 0
    assert "2 processes were launched (WORLD_SIZE=2) but training is not distributed" in proc.stderr
    assert "--use_cpu true" in proc.stderr
    assert not (tmp_path / "out2" / "results.json").exists()


def test_recipes_readme_commands_parse(tmp_path: Path, monkeypatch) -> None:
    """Every ``recipes/train.py`` command in recipes/README.md parses as written (output into tmp_path)."""
    import re
    import shlex

    text = (ROOT / "recipes" / "README.md").read_text()
    commands = [line for block in re.findall(r"```bash\n(.*?)```", text, re.S) for line in block.splitlines() if line]
    assert len(commands) == 6
    monkeypatch.chdir(ROOT)
    for command in commands:
        words = shlex.split(command)
        argv = words[words.index("recipes/train.py") + 1:]
        model_args, data_args, args = _recipe().parse_arguments(argv + ["--output_dir", str(tmp_path), "--use_cpu",
                                                                         "true", "--bf16", "false"])
        assert model_args.model_name_or_path and data_args.data_path, command
        if "--config_file" in words:
            assert (ROOT / words[words.index("--config_file") + 1]).is_file(), command
        if "--resume_from_checkpoint" in words:
            assert args.resume_from_checkpoint == "true"
