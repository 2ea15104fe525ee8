"""Run by tests/test_multiprocess.py, under `accelerate launch --multi_gpu --num_processes 2` or as one process.

Trains a tiny retriever for a few steps with cache write-back, records the negatives chosen for every example at
every step (gathered from all ranks) and each rank's final cache, and writes them to the output folder.
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


def main(out_dir: str, per_device_batch: int, sampling: str) -> None:
    out = Path(out_dir)
    train, _ = tiny_data()
    retriever = tiny_retriever(out / "tok", seed=0, dropout=0.0)
    args = CorrectorTrainingArguments(
        str(out / "run"), max_steps=4, per_device_train_batch_size=per_device_batch, learning_rate=1e-3,
        num_negatives=3, negative_sampling=sampling, cache_write_back=True, in_batch_negatives=False, use_cpu=True, ddp_backend="gloo" if "WORLD_SIZE" in os.environ else None,
        save_strategy="no", logging_steps=2, report_to="none", seed=0, dataloader_drop_last=True, disable_tqdm=True,
    )
    trainer = RecordingTrainer(model=retriever, args=args, train_dataset=train)
    trainer.train()
    chosen = gather_object(trainer.chosen)
    rank = trainer.accelerator.process_index
    torch.save({"cache": trainer.cache.matrix().clone(), "steps": trainer.cache.steps.clone()}, out / f"cache_rank{rank}.pt")
    if trainer.accelerator.is_main_process:
        (out / "chosen.json").write_text(json.dumps(sorted(chosen)))
        (out / "world.json").write_text(json.dumps({"world_size": trainer.accelerator.num_processes}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "topk")
