"""recipes/train.py: YAML + command-line parsing, every shipped config parses, and a full run on local files in
the Tevatron layouts (the NQ / MS MARCO recipes' loading code, without the Hub)."""

from __future__ import annotations

import importlib.util
import json
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
    assert card.data.library_name == "hf-corrector"
    assert "corrector" in ModelCard.load(out / "corrector" / "README.md").content.lower()
    assert "StaleCache.load" in (out / "stale_cache" / "README.md").read_text()


def test_full_run_with_eval_on_beir_folder(tmp_path: Path) -> None:
    """A BEIR folder with train/test qrels: before/after tables with stale, corrected and fresh embeddings."""
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
