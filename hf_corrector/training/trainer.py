"""`CorrectorTrainer`: dense-retriever training with a target corrector network, as a ``transformers.Trainer``.

One step (Monath et al., ICML 2024) reads:

1. **choose negatives**: the batch's queries, encoded without gradients, go to the :class:`NegativeMiner`, which
   asks the sampler (scores ``<f(x), h(g'(y))>`` over the cache; top-k, Gumbel-top-k, two-stage or ANCE-Tele)
   and/or takes the data's own negatives, never a positive;
2. **build the step's target batch**: the distinct positives and negatives, and each query's softmax columns;
3. **forward**: queries, targets (with f and g) and the targets' stale rows through h, in one ``forward`` of the
   wrapped model (so DDP / FSDP hooks see every gradient);
4. **loss components**: the task loss (truncated softmax, trains f and g) and the corrector loss (CE and / or MSE
   against the fresh embeddings held constant, trains h), each logged;
5. **write-back**: the cache manager counts the step's target encodings and writes them back if asked.

Periodic work (refreshes, sampler maintenance, the corrector fallback) runs in callbacks
(:mod:`hf_corrector.training.callbacks`). Baselines come from arguments alone (:mod:`hf_corrector.training.config`).

Example:
    >>> trainer = CorrectorTrainer(  # doctest: +SKIP
    ...     model=RetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2"),
    ...     args=CorrectorTrainingArguments("out", max_steps=100, num_negatives=7),
    ...     train_dataset=load_beir("path/to/scifact", split="train"),
    ...     eval_dataset=load_beir("path/to/scifact", split="test"),
    ... )
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import Trainer, TrainerCallback

from ..cache import StaleCache
from ..cache.manager import CacheManager
from ..cache.placement import resolve_cache_device
from ..data.format import RetrievalData
from ..errors import ConfigError
from ..hub.card_data import CardData, dataset_name
from ..models.corrector import CorrectorModel
from ..models.reader import Reader
from ..models.retriever import RetrieverModel
from ..utils.arrow_column import ArrowColumn
from ..utils.running_means import RunningMeans
from ..negatives import NegativeSampler, SamplerContext, TrainingExamples
from .callbacks import (CacheRefreshCallback, CorrectorFallbackCallback, CorrectorHealth, RetrieverCallbackHandler,
                        SamplerMaintenanceCallback)
from .checkpoints import finish_if_complete, last_complete_checkpoint, verify_checkpoint
from .collator import CorrectorBatch, CorrectorDataCollator, check_collator
from .config import CorrectorTrainingArguments
from .distributed import check_distributed_setup
from .hub_push import CorrectorHubMixin
from .inputs import index_inputs
from .losses import step_losses
from .model_card import ModelCardCallback, update_static
from .model import CorrectorStepOutput, CorrectorTrainingModel, step_output
from .nonfinite import SkipStep, guard_step_tensor
from .optim import build_lr_scheduler, build_optimizer
from .peft_utils import apply_peft
from .persistence import CheckpointingMixin
from .prepare import (checkpoint_cache, local_rows, means_true, prepare_cache, prepare_corrector, prepare_retriever,
                      record_run_preprocessing)
from .reader_step import ReaderStep, check_reader_data, load_reader
from .staleness import staleness_metrics
from .trainer_state import check_checkpoint_corrector
from .strategy import NegativeStrategy
from .targets import build_target_batch
from .trainer_eval import EvaluationMixin
from .semantics import refuse_a_softmax_of_one, seed_before_set_up, warn_accumulation_is_not_a_bigger_batch
from .user_optim import check_peft_by_hand, check_user_optimizer
from .validation import check_enough_negatives

__all__ = ["CorrectorTrainer", "CorrectorTrainingModel"]

logger = logging.getLogger(__name__)


class CorrectorTrainer(EvaluationMixin, CheckpointingMixin, CorrectorHubMixin, Trainer):
    """A :class:`~transformers.Trainer` for dual encoders with a stale cache and a corrector network.

    Args (beyond ``Trainer``'s):
        model: a :class:`RetrieverModel`, or a path / Hub id (a saved retriever or any ``AutoModel`` backbone).
        train_dataset: a :class:`RetrievalData` (queries + corpus), or a queries ``Dataset`` (``query_id``,
            ``query``, ``positive_ids``, optionally ``negative_ids``) together with ``corpus``.
        eval_dataset: a :class:`RetrievalData` or queries ``Dataset`` evaluated over the full corpus.
        corpus: ``Dataset`` with ``doc_id`` and ``text`` (taken from ``train_dataset`` when it is RetrievalData).
        cache: a :class:`StaleCache` for ``corpus`` (or a path to one); built with the starting model if omitted.
        corrector: a :class:`CorrectorModel` (or path); built from the arguments if omitted and one is needed.
        peft_config: a ``peft`` config (e.g. ``LoraConfig``) applied to the encoder tower(s).
        sampler: a :class:`~hf_corrector.negatives.NegativeSampler` replacing the one the arguments describe.

    Pluggable parts are class attributes: ``collator_class``, ``corrector_class``, ``cache_class``,
    ``cache_manager_class`` and ``refresh_callback_class``.
    """

    collator_class = CorrectorDataCollator
    corrector_class = CorrectorModel
    cache_class = StaleCache
    cache_manager_class = CacheManager
    refresh_callback_class = CacheRefreshCallback
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; Trainer divides by the GA steps
    _tag_names = ["hf-corrector", "dense-retrieval", "corrector-networks"]

    def __init__(self, model: RetrieverModel | str | None = None, args: CorrectorTrainingArguments | None = None,
                 data_collator=None, train_dataset: RetrievalData | datasets.Dataset | None = None,
                 eval_dataset: RetrievalData | datasets.Dataset | None = None, processing_class=None, model_init=None,
                 compute_metrics=None, callbacks: list[TrainerCallback] | None = None, optimizers=(None, None),
                 optimizer_cls_and_kwargs=None, preprocess_logits_for_metrics=None, *,
                 corpus: datasets.Dataset | None = None, cache: StaleCache | str | os.PathLike | None = None,
                 corrector: CorrectorModel | str | None = None, peft_config: Any | None = None,
                 sampler: NegativeSampler | None = None, reader: Reader | None = None, compute_loss_func=None):
        args = args if args is not None else CorrectorTrainingArguments("corrector-trainer-output")
        if not isinstance(args, CorrectorTrainingArguments):
            raise ConfigError("args must be CorrectorTrainingArguments")
        if compute_metrics is not None or preprocess_logits_for_metrics is not None:
            raise ConfigError("CorrectorTrainer computes retrieval metrics itself (nDCG@10, Recall@10/100, MRR@10 over "
                              "the whole corpus) in evaluate(); compute_metrics / preprocess_logits_for_metrics would "
                              "never be called: drop them, or subclass and override retrieval_metrics()")
        if model_init is not None:  # Trainer would call it in train() and put its model in place of retriever+corrector
            raise ConfigError("model_init: CorrectorTrainer builds its model once from model= (the retriever, with "
                              "the corrector and the stale cache made for it) and cannot re-create it per run or "
                              "trial; pass model=<a RetrieverModel or a path>, and for a hyperparameter search create "
                              "one CorrectorTrainer per trial")
        if compute_loss_func is not None:  # Trainer's (outputs, labels, num_items_in_batch): the batches have no labels
            raise ConfigError("compute_loss_func: CorrectorTrainer's loss is the task loss plus the corrector's, over "
                              "targets it chooses itself; subclass and override compute_loss, where outputs = "
                              "model(**inputs) gives outputs.loss, outputs.logits and outputs.labels")
        self.strategy = strategy = NegativeStrategy.from_args(args)  # the only reader of the strategy arguments
        seed_before_set_up(args)
        warn_accumulation_is_not_a_bigger_batch(args)
        refuse_a_softmax_of_one(args)
        retriever = prepare_retriever(model, processing_class, None)
        self.uses_peft = check_peft_by_hand(retriever, peft_config) or peft_config is not None
        retriever = apply_peft(retriever, peft_config) if peft_config is not None else retriever

        inputs = index_inputs(train_dataset, eval_dataset, corpus)
        self.corpus, self.doc_ids, self.doc_index = inputs.corpus, inputs.doc_ids, inputs.doc_index
        self.train_examples, self.eval_queries = inputs.train_examples, inputs.eval_queries
        check_reader_data(args, self.train_examples)
        k = strategy.num_negatives
        if k >= len(self.doc_ids):
            raise ConfigError(f"num_negatives={k} needs a corpus larger than {len(self.doc_ids)}")
        if self.train_examples is not None and k > 0:  # names the query that has too few
            check_enough_negatives(self.train_examples, len(self.doc_ids), k, pool_size=strategy.candidate_pool,
                                   skip_top=strategy.false_negatives.skip_top)

        corrector = prepare_corrector(corrector, retriever, args, strategy, self.corrector_class)
        check_collator(data_collator, self.train_examples)  # a standard collator: refused naming ours
        record_run_preprocessing(retriever, args, data_collator)  # the saved model encodes as this run trains
        if data_collator is None:
            data_collator = self.collator_class(
                tokenizer=retriever.tokenizer, query_max_length=retriever.config.query_max_length,
                query_prefix=retriever.config.query_prefix)
        reader = load_reader(args, reader, args.device) if args.reader_loss != "none" else None
        had_use_cache = "use_cache" in vars(retriever.config)  # Trainer sets model.config.use_cache (= ours)
        super().__init__(model=CorrectorTrainingModel(retriever, corrector,
                                                      reader.model if reader is not None and reader.trainable else None),
                         args=args, data_collator=data_collator,
                         train_dataset=self.train_examples, eval_dataset=self.eval_queries, processing_class=None,
                         model_init=None, compute_metrics=compute_metrics, callbacks=callbacks,
                         optimizers=optimizers, optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics)
        if not had_use_cache:  # a retriever has no KV cache: do not save the setting into its config.json
            vars(retriever.config).pop("use_cache", None)
        self.model.set_step(self._batch_step)  # model(**inputs) in a compute_loss override runs this step
        check_distributed_setup(self.accelerator)  # N processes that do not form one run would train N models
        if self.optimizer is not None:  # optimizers=(opt, sched): the corrector must be in it
            check_user_optimizer(self.model, self.optimizer, strategy.corrector_warmup_steps, self.lr_scheduler is None)
        self._eval_data = eval_dataset
        self.callback_handler = RetrieverCallbackHandler(self.callback_handler.callbacks, self.model, retriever.tokenizer,
                                                         self.optimizer, self.lr_scheduler)  # callbacks see the retriever
        self._metrics = RunningMeans()  # per-step values of the logging window (running sums)

        if cache is not None:  # given: checked now; otherwise loaded or built at its first use (_first_cache)
            cache = prepare_cache(cache, retriever, self.corpus, args, self.cache_class,
                                  rows=local_rows(self.accelerator, len(self.corpus), strategy.cache_sharding),
                                  accelerator=self.accelerator)
        self.cache_manager = self.cache_manager_class(self._first_cache if cache is None else cache,
                                                      ArrowColumn.from_dataset(self.corpus, "text"), self._encode_targets,
                                                      self.accelerator, write_back=strategy.cache_write_back,
                                                      sharding=strategy.cache_sharding)
        if cache is not None:
            self._place_cache(cache)
        self.sampler = sampler if sampler is not None else strategy.build_sampler(lambda: self.corrector)
        self.reader_step = None if reader is None else ReaderStep(reader, args, self.cache_manager, retriever,
                                                                  self.train_examples)
        if reader is not None and reader.trainable and self.accelerator.num_processes > 1:
            raise ConfigError("a jointly trained reader (reader_learning_rate) is single-process only for now; "
                              "freeze it (reader_learning_rate=None) for multi-process runs")
        examples = TrainingExamples.from_dataset(self.train_examples) if self.train_examples is not None else None
        self.sampler.setup(SamplerContext(self.cache_manager.reader(), self._encode_queries_for_sampler,
                                          seed=args.seed, chunk_size=args.corrector_chunk_size, device=args.device,
                                          examples=examples))
        self.negatives = strategy.build_miner(self.sampler, inputs.has_given_negatives)
        if self.train_examples is not None and k:
            self.negatives.check_examples([len(r) for r in self.train_examples["negative_rows"]],
                                          self.train_examples["query_id"])
        self.corrector_health = CorrectorHealth()
        self.fallback_callback = CorrectorFallbackCallback(self.corrector_health, self.sampler.transform,
                                                           args.corrector_fallback_patience,
                                                           strategy.corrector_warmup_steps, self.accelerator)
        for callback in (self.refresh_callback_class(self.cache_manager, strategy.cache_refresh_steps),
                         SamplerMaintenanceCallback(self.sampler), self.fallback_callback):
            self.add_callback(callback)
        card = CardData(train_dataset_name=dataset_name(train_dataset), eval_dataset_name=dataset_name(eval_dataset))
        self.model_card_callback = ModelCardCallback(card, lambda data: update_static(data, self))
        self.add_callback(self.model_card_callback)

    # ---------------------------------------------------------------------------------------------------------------
    # set-up
    def _encode_targets(self, texts: list[str], show_progress_bar: bool = False, desc: str | None = None) -> torch.Tensor:
        return self.retriever.encode_targets(texts, batch_size=self.args.cache_encode_batch_size,
                                             max_length=self.args.target_max_length, device=self.args.device,
                                             show_progress_bar=show_progress_bar and self.accelerator.is_main_process,
                                             desc=desc)

    def _encode_queries_for_sampler(self, texts: list[str]) -> torch.Tensor:
        return self.encode_queries(texts, show_progress_bar=False)

    @property
    def retriever(self) -> RetrieverModel:
        return self.accelerator.unwrap_model(self.model).retriever

    @property
    def corrector(self) -> CorrectorModel | None:
        return self.accelerator.unwrap_model(self.model).corrector

    def _first_cache(self) -> StaleCache:
        """The cache at its first use (train, evaluate, ``trainer.cache``), not in ``__init__``, so that
        ``train(resume_from_checkpoint=...)`` (which loads the checkpoint's first) encodes nothing it throws away:
        the checkpoint's of ``args.resume_from_checkpoint``, else built with the starting model and counted."""
        resume = self.args.resume_from_checkpoint
        folder = checkpoint_cache(self.args.output_dir, resume) if resume else None
        cache = prepare_cache(folder, self.retriever, self.corpus, self.args, self.cache_class, folder is not None,
                              rows=local_rows(self.accelerator, len(self.corpus), self.strategy.cache_sharding),
                              accelerator=self.accelerator)
        if folder is None and self.strategy.mines_negatives:  # with in-batch negatives it serves diagnostics only
            self.cache_manager.cost.initial_cache_encodings = len(self.doc_ids)
        self._place_cache(cache)
        return cache

    def _place_cache(self, local: StaleCache) -> None:
        """``cache_device``: keep this process's rows (and the corrected view) where negative selection reads them."""
        view = 2 if self.strategy.corrected_view_steps else 1
        device = resolve_cache_device(self.args.cache_device, self.args.device, view * local.nbytes)
        self.cache_manager.place(device, pin=device.type == "cpu" and torch.device(self.args.device).type != "cpu")

    @property
    def cache(self) -> StaleCache:
        """The stale cache. With ``cache_sharding="sharded"`` over several processes each holds only its rows, so
        this raises (saving or pushing it would silently drop the other processes' rows): use
        :meth:`save_cache` / :meth:`push_cache_to_hub` (every process), or ``trainer.cache_manager.cache`` for this
        process's shard."""
        if self.cache_manager.sharded:
            raise ConfigError("trainer.cache: with cache_sharding='sharded' each process holds only its rows "
                              f"{self.cache_manager.local_rows} of {len(self.cache_manager)}; save or publish the "
                              "whole cache with trainer.save_cache(path) / trainer.push_cache_to_hub(repo_id) called on "
                              "every process, or read this process's shard as trainer.cache_manager.cache")
        return self.cache_manager.cache

    @property
    def corpus_texts(self) -> list[str]:
        return self.cache_manager.texts

    @property
    def cost(self) -> dict[str, int]:
        """Re-embedding cost so far, by purpose (a snapshot; see :class:`~hf_corrector.cache.manager.ReembeddingCost`)."""
        return self.cache_manager.cost.as_dict()

    def total_reembedding_cost(self) -> int:
        """Target-encoder forward passes spent on the corpus: initial cache + per-step encodings + refreshes."""
        return self.cache_manager.cost.total

    # ---------------------------------------------------------------------------------------------------------------
    # optimisation
    def create_optimizer(self, model=None):
        """One optimizer with the encoders and the corrector in separate parameter groups (own learning rates)."""
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model, self.args, self.get_decay_parameter_names(self.model),
                                             self.optimizer_cls_and_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """transformers' own ``lr_scheduler_type`` schedule (with ``lr_scheduler_kwargs`` and ``warmup_steps``) for
        the encoders, frozen during the corrector warm-up; the corrector's group stays constant.
        See :func:`hf_corrector.training.optim.build_lr_scheduler`."""
        if self.lr_scheduler is None:
            self.lr_scheduler = build_lr_scheduler(self.args, optimizer or self.optimizer, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---------------------------------------------------------------------------------------------------------------
    # the training step
    def choose_negatives(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, k) cache rows of the chosen negatives for the batch's queries.

        Queries are encoded without dropout (eval mode) for this choice, so it depends on the model alone, not on
        the dropout RNG: the same on every process and after a resume.
        """
        retriever = self.retriever
        was_training = retriever.training
        retriever.eval()
        try:
            with torch.no_grad(), self.autocast_smart_context_manager():
                q = retriever.embed(inputs["query_input_ids"], inputs["query_attention_mask"], "query").float()
        finally:
            retriever.train(was_training)
        exclude = [[int(r) for r in row if r >= 0] for row in inputs["exclude_rows"].tolist()]
        keys = [str(int(e)) for e in inputs["example_ids"].tolist()]
        given = inputs.get("given_negative_rows")
        return self.negatives.choose(q, inputs["positive_rows"].cpu(), exclude, keys,
                                     given.cpu() if given is not None else None, self.state.global_step)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        if self.reader_step is not None:  # reader-supervised (issue 20): hf_corrector.training.reader_step
            loss, out, logged = self.reader_step.compute_loss(model, inputs, self.choose_negatives(inputs).cpu(),
                                                              self.state.global_step)
            for name, value in logged.items():
                self._metrics.add(name, value)
            if "staleness_cos_corrected" in logged:
                self.corrector_health.record(logged["staleness_cos_stale"], logged["staleness_cos_corrected"])
            return (loss, out) if return_outputs else loss
        device = inputs["query_input_ids"].device
        b = inputs["query_input_ids"].shape[0]
        neg = (self.choose_negatives(inputs).cpu() if self.strategy.mines_negatives
               else torch.zeros((b, 0), dtype=torch.long))
        batch = build_target_batch(inputs["positive_rows"].cpu(), neg, inputs["exclude_rows"].cpu(),
                                   args.in_batch_negatives)
        tok = self.retriever.tokenize(self.cache_manager.texts_of(batch.targets), "target", args.target_max_length)
        stale_rows = self.cache_manager.rows(batch.targets)  # g'(y): corrector input and staleness logs
        out = model(query_input_ids=inputs["query_input_ids"], query_attention_mask=inputs["query_attention_mask"],
                    target_input_ids=tok["input_ids"].to(device), target_attention_mask=tok["attention_mask"].to(device),
                    stale_target_embeddings=stale_rows.to(device) if self.corrector is not None else None)
        q, t, corrected = out["query_embeddings"], out["target_embeddings"], out.get("corrected_embeddings")
        on_device = batch.to(device)
        losses = step_losses(q, t, corrected, on_device, args)
        warm = self.state.global_step < self.strategy.corrector_warmup_steps
        loss = losses["task_loss"] * (0.0 if warm else 1.0) + losses.get("corrector_loss", 0.0)
        # the tensors first, so that the error names the source of a NaN rather than the loss it spreads to
        for tensor, name in ((q, "query embeddings"), (t, "target embeddings"), (corrected, "corrector output"),
                             (loss, "loss")):
            if tensor is not None:
                guard_step_tensor(tensor, name, self.state.global_step, args.nonfinite_action, args.output_dir,
                             args.should_save)
        self._record_step_metrics(losses, q, t, stale_rows, corrected, batch.inverse)
        self.cache_manager.record_step(batch.targets, t.detach(), self.state.global_step)
        return (loss, {**out, "target_batch": on_device}) if return_outputs else loss

    def _batch_step(self, inputs: dict) -> CorrectorStepOutput:
        """``model(**inputs)`` inside a ``compute_loss`` override: this trainer's own step."""
        loss, out = CorrectorTrainer.compute_loss(self, self.accelerator.unwrap_model(self.model), inputs, True)
        return step_output(loss, out, self.args.temperature)

    def _record_step_metrics(self, losses, q, t, stale_rows, corrected, inverse) -> None:
        for name, value in losses.items():  # after the finiteness checks: a skipped step logs no NaN
            self._metrics.add(name, float(value.detach()))
        stats = staleness_metrics(q, t, stale_rows, corrected, inverse)
        for name, value in stats.items():
            self._metrics.add(name, value)
        if "staleness_cos_corrected" in stats:
            self.corrector_health.record(stats["staleness_cos_stale"], stats["staleness_cos_corrected"])

    def training_step(self, model, inputs, num_items_in_batch=None):
        try:
            return super().training_step(model, CorrectorBatch(inputs), num_items_in_batch)
        except SkipStep:  # raised before backward: earlier micro-batches of the accumulation window keep theirs
            self._metrics.add("skipped_steps", 1.0)
            return torch.zeros((), device=self.args.device)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss components, staleness statistics and the re-embedding cost to Trainer's logs."""
        if "loss" in logs:
            self._metrics.merge(self.negatives.dropped)
            logs.update(self._metrics.pop(counted=("skipped_steps",)))
            if self.corrector is not None:
                logs["corrector_fallback"] = float(self.fallback_callback.falling_back)
            logs["reembedding_cost"] = self.total_reembedding_cost()
            logs.update(self.sampler.log_metrics())  # e.g. the tree sampler's acceptance rate and local rebuilds
            if self.reader_step is not None:
                logs["reader_forward_passes"] = self.reader_step.forward_passes
        super().log(logs, start_time)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trainer's ``train`` that also restores the cache and the trainer's extra state on resume."""
        if means_true(resume_from_checkpoint):  # the newest complete checkpoint (incomplete ones are skipped)
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ConfigError(f"no complete checkpoint found in {self.args.output_dir} to resume from")
        elif resume_from_checkpoint:
            verify_checkpoint(resume_from_checkpoint)  # CacheCorruptError naming the folder if its save did not finish
        if resume_from_checkpoint:  # the checkpoint's cache first: the run's own is then never built
            check_checkpoint_corrector(Path(resume_from_checkpoint), self.corrector)  # before any state is read
            self._load_extra_state(Path(resume_from_checkpoint))
        self.cache_manager.cache  # noqa: B018 - loaded or built now, on every process, with the starting weights
        result = finish_if_complete(self, resume_from_checkpoint)  # at max_steps already: Trainer would step
        if result is None:
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                                   ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)
        total = self.total_reembedding_cost()
        logger.info("re-embedding cost: %s (total %d target encodings, %.2f corpus passes)", self.cost, total,
                    total / max(len(self.doc_ids), 1))
        self.state.log_history.append({**{f"reembedding_{k}": v for k, v in self.cost.items()},
                                       "reembedding_total": total, "step": self.state.global_step})
        return result
