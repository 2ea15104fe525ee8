"""Run by tests/test_multiprocess.py, under `accelerate launch --multi_gpu --num_processes 2` or as one process.

``ddp_script.py OUT PER_DEVICE_BATCH SAMPLING [replicated]``: trains a tiny retriever for a few steps with cache
write-back, records the negatives chosen for every example at every step (gathered from all ranks) and each rank's
final cache, and writes them to OUT.

``ddp_script.py OUT PER_DEVICE_BATCH scenario sharded|replicated``: the scale scenario (issue 15) with the given
cache sharding, in one launch: a top-k run (write-back, a refresh at step 3, checkpoints at steps 2 and 4), a run
resumed from its checkpoint-2, and a Gumbel run; each records the chosen negatives and every rank's cache rows.

``ddp_script.py OUT PER_DEVICE_BATCH resume CHECKPOINT sharded|replicated``: the scenario's top-k run resumed from
CHECKPOINT (written by any number of processes, issue 21); records the cache rows as loaded and the run.

``ddp_script.py OUT PER_DEVICE_BATCH build sharded|replicated [BUILD_DIR]``: only the trainer's initial cache
build (``cache_build_dir=BUILD_DIR``); records each rank's rows, the rows it encoded and the texts it encoded.

``ddp_script.py OUT PER_DEVICE_BATCH evaluate sharded|replicated``: 2 training steps, then fresh / stale / corrected
evaluation; records the metrics and the number of whole-cache gathers during evaluation.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accelerate.utils import gather_object  # noqa: E402

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments  # noqa: E402
from tests.tiny import tiny_data, tiny_retriever  # noqa: E402


class RecordingTrainer(CorrectorTrainer):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.chosen: list[tuple[int, int, list[int]]] = []

    def choose_negatives(self, inputs):
        neg = super().choose_negatives(inputs)
        for ex, rows in zip(inputs["example_ids"].tolist(), neg.tolist()):
            self.chosen.append((self.state.global_step, ex, rows))
        return neg


def _args(run_dir: Path, per_device_batch: int, sampling: str, sharding: str, **kw) -> CorrectorTrainingArguments:
    options = dict(max_steps=4, per_device_train_batch_size=per_device_batch, learning_rate=1e-3, num_negatives=3,
                   negative_sampling=sampling, cache_write_back=True, in_batch_negatives=False, use_cpu=True,
                   ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None, save_strategy="no", logging_steps=2,
                   report_to="none", seed=0, dataloader_drop_last=True, disable_tqdm=True, cache_sharding=sharding)
    options.update(kw)
    return CorrectorTrainingArguments(str(run_dir), **options)


def _record(trainer: RecordingTrainer, out: Path, name: str) -> None:
    chosen = gather_object(trainer.chosen)
    cache = trainer.cache_manager.cache
    shard = {"lo": trainer.cache_manager.local_rows[0], "cache": cache.matrix().float().clone(),
             "steps": cache.steps.clone(), "rank": trainer.accelerator.process_index}
    torch.save(shard, out / f"{name}_rank{trainer.accelerator.process_index}.pt")
    if trainer.accelerator.is_main_process:
        (out / f"{name}_chosen.json").write_text(json.dumps(sorted(chosen)))
        (out / "world.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes}))


def scenario(out: Path, per_device_batch: int, sharding: str) -> None:
    train, _ = tiny_data()
    tok = out / "tok"
    # top-k with write-back, a refresh at step 3, checkpoints at 2 and 4
    args = _args(out / "topk", per_device_batch, "topk", sharding, cache_refresh_steps=3, save_strategy="steps",
                 save_steps=2)
    trainer = RecordingTrainer(model=tiny_retriever(tok, seed=0, dropout=0.0), args=args, train_dataset=train)
    trainer.train()
    _record(trainer, out, "topk")
    # resumed from checkpoint-2 of that run: must continue exactly
    ckpt = str(out / "topk" / "checkpoint-2")
    args = _args(out / "resumed", per_device_batch, "topk", sharding, cache_refresh_steps=3,
                 resume_from_checkpoint=ckpt)
    trainer = RecordingTrainer(model=tiny_retriever(tok, seed=0, dropout=0.0), args=args, train_dataset=train)
    trainer.train(resume_from_checkpoint=ckpt)
    _record(trainer, out, "resumed")
    # Gumbel-top-k with write-back
    args = _args(out / "gumbel", per_device_batch, "gumbel", sharding, sampling_temperature=0.1)
    trainer = RecordingTrainer(model=tiny_retriever(tok, seed=0, dropout=0.0), args=args, train_dataset=train)
    trainer.train()
    _record(trainer, out, "gumbel")


def resume(out: Path, per_device_batch: int, checkpoint: str, sharding: str) -> None:
    """Resume the scenario's top-k run from ``checkpoint`` (written by any number of processes) to step 4."""
    train, _ = tiny_data()
    args = _args(out / "resumed_here", per_device_batch, "topk", sharding, cache_refresh_steps=3,
                 resume_from_checkpoint=checkpoint)
    trainer = RecordingTrainer(model=tiny_retriever(out / "tok", seed=0, dropout=0.0), args=args, train_dataset=train)
    loaded = trainer.cache_manager.cache
    lo = trainer.cache_manager.local_rows[0]
    torch.save({"lo": lo, "cache": loaded.matrix().float().clone(), "steps": loaded.steps.clone()},
               out / f"loaded_rank{trainer.accelerator.process_index}.pt")
    trainer.train(resume_from_checkpoint=checkpoint)
    _record(trainer, out, "resumed_here")


def evaluate(out: Path, per_device_batch: int, sharding: str) -> None:
    """Train 2 steps (write-back), then evaluate fresh, stale and corrected corpora; record the metrics and how
    often the whole cache was gathered during evaluation."""
    train, test = tiny_data()
    args = _args(out / "eval_run", per_device_batch, "topk", sharding, max_steps=2,
                 eval_corpus_embeddings="fresh,stale,corrected")
    trainer = RecordingTrainer(model=tiny_retriever(out / "tok", seed=0, dropout=0.0), args=args, train_dataset=train)
    trainer.train()
    manager, calls = trainer.cache_manager, []
    gathered = manager.gathered
    manager.gathered = lambda *a, **kw: calls.append(1) or gathered(*a, **kw)
    metrics = trainer.evaluate(test)
    calls = gather_object([len(calls)])
    if trainer.accelerator.is_main_process:
        (out / "eval.json").write_text(json.dumps({"metrics": metrics, "gathered": calls}))


def build(out: Path, per_device_batch: int, sharding: str, build_dir: str | None) -> None:
    """Construct the trainer (the initial cache build) counting every text the target tower encodes."""
    train, _ = tiny_data()
    retriever, encoded = tiny_retriever(out / "tok", seed=0, dropout=0.0), []
    encode = retriever.encode_targets
    retriever.encode_targets = lambda texts, **kw: encoded.extend(texts) or encode(texts, **kw)
    args = _args(out / "build_run", per_device_batch, "topk", sharding, cache_build_dir=build_dir,
                 cache_encode_batch_size=1)  # one text a batch: no padding, so any row split encodes bit-equally
    trainer = RecordingTrainer(model=retriever, args=args, train_dataset=train)
    cache, rank = trainer.cache_manager.cache, trainer.accelerator.process_index
    texts = list(trainer.corpus["text"])
    torch.save({"lo": trainer.cache_manager.local_rows[0], "cache": cache.matrix().float().clone(),
                "doc_ids": cache.doc_ids, "encoded": [texts.index(t) for t in encoded],
                "initial_cache_encodings": trainer.cost["initial_cache_encodings"],
                "provenance": cache.provenance}, out / f"build_rank{rank}.pt")


def main(out_dir: str, per_device_batch: int, sampling: str) -> None:
    out = Path(out_dir)
    train, _ = tiny_data()
    retriever = tiny_retriever(out / "tok", seed=0, dropout=0.0)
    args = _args(out / "run", per_device_batch, sampling, "replicated")
    trainer = RecordingTrainer(model=retriever, args=args, train_dataset=train)
    trainer.train()
    chosen = gather_object(trainer.chosen)
    rank = trainer.accelerator.process_index
    torch.save({"cache": trainer.cache_manager.cache.matrix().clone(), "steps": trainer.cache_manager.cache.steps.clone()}, out / f"cache_rank{rank}.pt")
    if trainer.accelerator.is_main_process:
        (out / "chosen.json").write_text(json.dumps(sorted(chosen)))
        (out / "world.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes}))


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[3] == "build":
        build(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else None)
    elif len(sys.argv) > 3 and sys.argv[3] == "evaluate":
        evaluate(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4])
    elif len(sys.argv) > 3 and sys.argv[3] == "resume":
        resume(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4], sys.argv[5])
    elif len(sys.argv) > 3 and sys.argv[3] == "scenario":
        scenario(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4] if len(sys.argv) > 4 else "sharded")
    else:
        main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "topk")
    if torch.distributed.is_initialized():
        # Leave together, then skip the C++ teardown: gloo's process group destructor (in destroy_process_group or at
        # interpreter exit) now and then aborts a rank with "terminate called without an active exception" after
        # every output is written (seen once in CI on test_scale_phases). Everything this script records is written
        # and closed above, so os._exit loses nothing.
        torch.distributed.barrier()
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(0)
