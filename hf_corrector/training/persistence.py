"""Saving and resuming a :class:`~hf_corrector.CorrectorTrainer` run: the model folder, the cache (whole or one shard
per process), checkpoints marked complete only at the end, and the trainer's extra state (cost, sampler state).

A mixin because these methods override ``transformers.Trainer``'s own save / load hooks; it holds no state of its
own and reads only the trainer attributes named in :class:`CheckpointingMixin`'s docstring.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformers.trainer_utils import rotate_checkpoints

from ..cache.sharded_store import check_part_provenance, push_to_hub as push_saved_cache
from .checkpoints import remove_checkpoint_marker, write_checkpoint_marker
from .trainer_state import load_extra_state, load_model_weights, publish_model, save_extra_state, save_model_files

CACHE_DIR = "stale_cache"


class CheckpointingMixin:
    """Save / resume hooks of the trainer. Uses ``args``, ``state``, ``accelerator``, ``cache_manager``,
    ``cache_class``, ``sampler``, ``reader_step``, ``fallback_callback``, ``retriever``, ``corrector``, ``uses_peft``,
    ``doc_ids``, ``cost``, ``_place_cache()`` and ``total_reembedding_cost()`` of :class:`~hf_corrector.CorrectorTrainer`.

    Example:
        >>> trainer.save_model("out")                    # doctest: +SKIP
        >>> trainer.train(resume_from_checkpoint=True)   # doctest: +SKIP
    """

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        # sharded: every process writes its own shard next to the output folder (save_model runs on every process)
        self.cache_manager.prepare_save(Path(output_dir or self.args.output_dir) / CACHE_DIR)
        super().save_model(output_dir, _internal_call)

    def save_cache(self, path: str | os.PathLike) -> None:
        """Save the whole cache into ``path`` (call on every process: a sharded cache is written shard by shard,
        one per process, plus a manifest; ``StaleCache.load(path)`` reads it with any number of processes)."""
        self.cache_manager.save(path)

    def push_cache_to_hub(self, repo_id: str, private: bool | None = None, token: str | None = None) -> str | None:
        """Publish the whole cache as a dataset repo (call on every process; the main process uploads). A sharded
        cache is saved shard by shard first and pushed in ``datasets``' sharded layout
        (``data/train-0000r-of-0000W.parquet``), never gathered into one process."""
        if not self.cache_manager.sharded:
            return self.cache.push_to_hub(repo_id, private=private, token=token) if self.args.should_save else None
        folder = Path(self.args.output_dir) / f".{CACHE_DIR}-push"
        self.save_cache(folder)
        repo = push_saved_cache(folder, repo_id, private=private, token=token) if self.args.should_save else None
        self.accelerator.wait_for_everyone()
        return repo

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the retriever, ``corrector/`` and the arguments, written aside and then moved into place."""
        if self.args.should_save:
            publish_model(Path(output_dir or self.args.output_dir), self._save_model_files)

    def _save_model_files(self, output_dir: str) -> None:
        """The retriever, ``corrector/``, the arguments, the cost and the cache (``stale_cache/``: what continuing
        training needs; ``StaleCache.load(output_dir + "/stale_cache")``)."""
        save_model_files(output_dir, self.retriever, self.corrector, self.uses_peft, self.args.to_json_string(),
                         {**self.cost, "total": self.total_reembedding_cost(), "num_docs": len(self.doc_ids)})
        self.cache_manager.save_into(Path(output_dir) / CACHE_DIR)
        if self.reader_step is not None:
            self.reader_step.save(output_dir)

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint plus the cache and this trainer's extra state (cost, sampler state). The folder is
        marked complete only at the very end, and older checkpoints are rotated out only after that."""
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        if self.args.should_save:
            remove_checkpoint_marker(folder)  # rewritten in place: must not look complete until it is
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotate after the marker, below
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        if self.accelerator.num_processes > 1:
            self.accelerator.wait_for_everyone()  # every rank's files are written before the marker
        if not self.args.should_save or not folder.exists():
            return
        sampler_state, tensors = self.sampler.state_dict()
        save_extra_state(folder, {"cost": self.cost, "fallback": self.fallback_callback.state_dict(),
                                  "sampler": sampler_state, "global_step": self.state.global_step,
                                  **({"reader": self.reader_step.state_dict()} if self.reader_step else {})}, tensors)
        write_checkpoint_marker(folder, self.state.global_step)
        rotate_checkpoints(output_dir=str(folder.parent), save_total_limit=limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self._push_pending_checkpoint()

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        load_model_weights(Path(resume_from_checkpoint), wrapper.retriever, wrapper.corrector, self.uses_peft)
        if self.reader_step is not None:
            self.reader_step.load(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        spent = self.cache_manager.cost.as_dict()  # encodings spent stay spent: the best checkpoint's counts are older
        self._load_from_checkpoint(self.state.best_model_checkpoint)
        self._load_extra_state(Path(self.state.best_model_checkpoint))
        self.cache_manager.cost.load(spent)

    def _load_extra_state(self, folder: Path) -> None:
        if (folder / CACHE_DIR).exists():  # written by earlier weights of this run: check the corpus only
            manager = self.cache_manager
            if manager.sharded:  # this process's rows only (of a cache saved by any number of processes)
                cache = self.cache_class.load(folder / CACHE_DIR, rows=manager.local_rows)
                check_part_provenance(cache, folder / CACHE_DIR, self.doc_ids, manager.texts)
            else:
                cache = self.cache_class.load(folder / CACHE_DIR)
                cache.check_provenance(doc_ids=self.doc_ids, texts=self.cache_manager.texts)
            cache.check_model(self.retriever)  # dimension, pooling, normalisation
            if not manager.ready:  # the run's first cache (none was built): placed as a built one would be
                self._place_cache(cache)
            self.cache_manager.cache = cache
        loaded = load_extra_state(folder)
        if loaded is not None:
            state, tensors = loaded
            self.cache_manager.cost.load(state.get("cost", {}))
            self.fallback_callback.load_state_dict(state.get("fallback", {}))
            self.sampler.load_state_dict(state.get("sampler", {}), tensors)
            if self.reader_step is not None:
                self.reader_step.load_state_dict(state.get("reader", {}))
