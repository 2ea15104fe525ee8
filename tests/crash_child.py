"""Scenarios run in separate processes by tests/test_crash_safety.py, which SIGKILL themselves at chosen points.

The kill hooks live here (patched into the child only), never in the library. Every scenario writes what the test
needs to compare (a JSON report, matrices, saved models) into its folder. Children use one torch thread, so that
killed, resumed and uninterrupted runs compute bit-identical numbers.

Run directly for debugging: ``python -m tests.crash_child train OUT [--kill POINT] [--resume]``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import hf_corrector.cache.folder as cache_folder_module
from transformers import TrainerCallback

from hf_corrector import CorrectorTrainer, RetrieverModel, StaleCache
from hf_corrector.training.checkpoints import last_complete_checkpoint
from hf_corrector.training.config import CorrectorTrainingArguments
from tests.tiny import tiny_data, tiny_retriever

SHARD_SIZE = 16  # the tiny corpus (120 docs) makes 8 shards
KILL_POINTS = ("checkpoint_cache", "optimizer", "refresh", "write_back", "final_checkpoint")


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _setup() -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# -- (a) cache build with shards --------------------------------------------------------------------------------------
def build_cache(folder: str, kill_after_shards: int | None = None, kill_in_write: bool = False,
                reference: bool = False) -> None:
    """Build the tiny corpus's cache with ``shard_dir=folder/shards``.

    ``kill_after_shards=k``: SIGKILL once k shards are written, while the (k+1)-th is being encoded or, with
    ``kill_in_write``, half-way through writing its file. Otherwise finish, record how many texts were encoded, save
    the matrix, and (``reference``) also build uninterrupted into a fresh shard folder for comparison.
    """
    _setup()
    folder = Path(folder)
    train, _ = tiny_data()
    retriever = tiny_retriever(folder, seed=0)
    calls = {"n": 0, "texts": 0}
    original_encode = RetrieverModel.encode_targets

    def encode_targets(self, texts, **kwargs):
        calls["n"] += 1
        calls["texts"] += len(texts)
        out = original_encode(self, texts, **kwargs)
        if kill_after_shards is not None and calls["n"] == kill_after_shards + 1 and not kill_in_write:
            _die()  # the shard is encoded but not yet written
        return out

    RetrieverModel.encode_targets = encode_targets
    if kill_in_write:
        original_save = np.save

        def torn_save(file, arr, *args, **kwargs):
            if calls["n"] == kill_after_shards + 1:
                original_save(file, arr, *args, **kwargs)
                size = os.path.getsize(file)
                with open(file, "r+b") as fh:
                    fh.truncate(size // 2)
                _die()
            return original_save(file, arr, *args, **kwargs)

        np.save = torn_save
    cache = StaleCache.build(train.corpus, retriever, batch_size=8, shard_dir=folder / "shards", shard_size=SHARD_SIZE,
                             show_progress_bar=False)
    report = {"encoded_texts": calls["texts"], "encode_calls": calls["n"], "num_docs": len(train.corpus)}
    np.save(folder / "resumed.npy", cache.matrix().numpy())
    if reference:
        ref = StaleCache.build(train.corpus, retriever, batch_size=8, shard_dir=folder / "reference_shards",
                               shard_size=SHARD_SIZE, show_progress_bar=False)
        np.save(folder / "reference.npy", ref.matrix().numpy())
    (folder / "report.json").write_text(json.dumps(report))


# -- (b) StaleCache.save killed half-way through writing cache.arrow --------------------------------------------------
def save_cache(source: str, dest: str) -> None:
    """Load ``source``, change it, and save it to ``dest`` with a SIGKILL half-way through writing cache.arrow."""
    _setup()
    cache = StaleCache.load(source)
    cache.update(torch.arange(len(cache) // 2), torch.ones(len(cache) // 2, cache.dim), step=5)

    def torn_write(table, path):
        sink = __import__("pyarrow").BufferOutputStream()
        with __import__("pyarrow").ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue().to_pybytes()
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
        _die()

    cache_folder_module.write_stream = torn_write
    cache.save(dest)


# -- (c, d) training --------------------------------------------------------------------------------------------------
def make_trainer(out_dir: str | os.PathLike, save_total_limit: int | None = None, **overrides) -> CorrectorTrainer:
    """The crash tests' training run: 12 steps, checkpoints every 4, write-back every step, refresh every 6."""
    train, _ = tiny_data()
    kwargs = dict(max_steps=12, per_device_train_batch_size=4, num_negatives=3, save_steps=4, logging_steps=2,
                  report_to=[], seed=0, use_cpu=True, disable_tqdm=True, cache_write_back=True, cache_refresh_steps=6,
                  cache_encode_batch_size=32, save_total_limit=save_total_limit)
    kwargs.update(overrides)
    args = CorrectorTrainingArguments(str(out_dir), **kwargs)
    return CorrectorTrainer(model=tiny_retriever(Path(out_dir), seed=0), args=args, train_dataset=train)


def _install_kill(point: str) -> None:
    from transformers import Trainer

    if point == "checkpoint_cache":  # the 2nd checkpoint's cache.arrow is half written
        original = cache_folder_module.write_stream
        seen = {"n": 0}

        def write_stream(table, path):
            seen["n"] += 1
            original(table, path)
            if seen["n"] == 2:
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                _die()

        cache_folder_module.write_stream = write_stream
    elif point == "optimizer":  # the 2nd checkpoint's optimizer.pt is torn
        original_opt = Trainer._save_optimizer_and_scheduler
        seen = {"n": 0}

        def save_opt(self, output_dir):
            seen["n"] += 1
            original_opt(self, output_dir)
            if seen["n"] == 2:
                path = os.path.join(output_dir, "optimizer.pt")
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                _die()

        Trainer._save_optimizer_and_scheduler = save_opt
    elif point == "refresh":  # the full refresh at step 6 dies half-way through replacing the rows
        original_replace = StaleCache.replace_all

        def replace_all(self, embeddings, step):
            if step == 6:
                half = len(self) // 2
                self.update(torch.arange(half), embeddings[:half], step)
                _die()
            return original_replace(self, embeddings, step)

        StaleCache.replace_all = replace_all
    elif point == "write_back":  # dies in the write-back of step 10 (global_step 9), after the rows are written
        original_update = StaleCache.update

        def update(self, rows, embeddings, step):
            original_update(self, rows, embeddings, step)
            if step == 9:
                _die()

        StaleCache.update = update
    elif point == "final_checkpoint":  # dies right after the checkpoint at max_steps is complete (before save_model)
        original_save = CorrectorTrainer._save_checkpoint

        def save_checkpoint(self, model, trial):
            original_save(self, model, trial)
            if self.state.global_step >= self.args.max_steps:
                _die()

        CorrectorTrainer._save_checkpoint = save_checkpoint
    elif point is not None:
        raise ValueError(f"unknown kill point {point!r}; choose one of {KILL_POINTS}")


def _kill_after(seconds: float) -> None:
    """SIGKILL this process ``seconds`` from now, wherever it is (a random moment of training or saving)."""
    timer = threading.Timer(seconds, _die)
    timer.daemon = True
    timer.start()


class _KillTimerAtStep(TrainerCallback):
    """Arms the SIGKILL timer when optimizer step ``step + 1`` begins (relative to the step, so that a slower, busier
    machine moves the kill along with the step instead of before the first checkpoint)."""

    def __init__(self, step: int, seconds: float):
        self.step, self.seconds = step, seconds

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _kill_after(self.seconds)
            self.step = -1
        return control


def train(out_dir: str, kill: str | None = None, resume: bool | str = False, save_total_limit: int | None = None,
          kill_after: float | None = None, kill_at_step: int | None = None) -> None:
    """Train (or resume) the crash tests' run; SIGKILL at ``kill``, or ``kill_after`` seconds after training starts
    (or, with ``kill_at_step=s``, after step s+1 begins). ``report.json`` records the time of ``train()`` plus the
    final saves as ``seconds``. ``resume="auto"`` resumes if a complete checkpoint exists and starts afresh otherwise.
    A finished run saves ``final/`` (retriever and corrector via ``save_model``), ``final_cache/`` and
    ``report.json``."""
    _setup()
    recorder = _Recorder()
    logging.getLogger("hf_corrector").addHandler(recorder)
    logging.getLogger("hf_corrector").setLevel(logging.INFO)
    _install_kill(kill)
    trainer = make_trainer(out_dir, save_total_limit=save_total_limit)
    if resume == "auto":
        resume = last_complete_checkpoint(out_dir) is not None
    resumed_from = last_complete_checkpoint(out_dir) if resume else None
    start = time.perf_counter()
    if kill_after is not None and kill_at_step is not None:
        trainer.add_callback(_KillTimerAtStep(kill_at_step, kill_after))
    elif kill_after is not None:
        _kill_after(kill_after)
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    trainer.save_model(os.path.join(out_dir, "final"))
    trainer.cache.save(os.path.join(out_dir, "final_cache"))
    report = {"resumed_from": resumed_from, "global_step": trainer.state.global_step, "cost": trainer.cost,
              "log": recorder.messages, "seconds": time.perf_counter() - start,
              "training_loss": output.training_loss}
    Path(out_dir, "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["train"])
    parser.add_argument("out_dir")
    parser.add_argument("--kill", choices=KILL_POINTS)
    parser.add_argument("--resume", action="store_true")
    ns = parser.parse_args()
    train(ns.out_dir, kill=ns.kill, resume=ns.resume)
