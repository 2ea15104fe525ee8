"""`CorrectorTrainer`: dense-retriever training with a target corrector network, as a ``transformers.Trainer``.

One step (Monath et al., ICML 2024):

1. encode the batch's queries with f (a gradient-free pass, used only to choose negatives);
2. score the whole cache with the corrected embeddings ``<f(x), h(g'(y))>`` in memory-bounded chunks;
3. choose negatives per query (exact top-k or Gumbel-top-k), never one of its positives;
4. encode queries, positives and chosen negatives with the current f and g, through the wrapped model's
   ``forward`` (so DDP/FSDP hooks see every gradient), and h on the same targets' stale embeddings;
5. task loss: truncated-softmax cross-entropy with the fresh embeddings (trains f, g);
6. corrector loss: ``ce`` and/or ``mse`` against the fresh embeddings, held constant (trains h only);
7. optionally write the fresh embeddings back into the cache.

Baselines come from arguments alone (see :mod:`hf_corrector.training.config`).

Example:
    >>> trainer = CorrectorTrainer(  # doctest: +SKIP
    ...     model=RetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2"),
    ...     args=CorrectorTrainingArguments("out", max_steps=100, num_negatives=7),
    ...     train_dataset=load_beir("scifact", split="train"),
    ...     eval_dataset=load_beir("scifact", split="test"),
    ... )
    >>> trainer.train()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import datasets
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from ..cache import StaleCache
from ..data.format import RetrievalData
from ..errors import CacheMismatchError, ConfigError, NonFiniteError
from ..evaluation.metrics import retrieval_metrics
from ..hub.callbacks import ModelCardCallback, push_checkpoint, write_model_cards
from ..models.corrector import CorrectorConfig, CorrectorModel
from ..models.retriever import RetrieverModel, load_retriever
from .checkpoints import (finish_if_complete, last_complete_checkpoint, publish_dir, remove_checkpoint_marker,
                          verify_checkpoint, write_checkpoint_marker)
from .collator import CorrectorDataCollator, prepare_train_examples
from .config import CorrectorTrainingArguments
from .losses import corrector_loss, task_loss
from .sampling import select_negatives
from .validation import check_enough_negatives

logger = logging.getLogger(__name__)

CACHE_DIR = "stale_cache"
EXTRA_STATE = "corrector_trainer_state.json"
EXTRA_TENSORS = "corrector_trainer_tensors.safetensors"
PEFT_DIR = "peft_adapter"


class CorrectorTrainingModel(nn.Module):
    """What the Trainer wraps: the retriever and the corrector, so one ``forward`` carries every gradient."""

    def __init__(self, retriever: RetrieverModel, corrector: CorrectorModel | None = None):
        super().__init__()
        self.retriever = retriever
        self.corrector = corrector

    def forward(
        self,
        query_input_ids: torch.Tensor,
        query_attention_mask: torch.Tensor,
        target_input_ids: torch.Tensor,
        target_attention_mask: torch.Tensor,
        stale_target_embeddings: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        out = self.retriever(query_input_ids, query_attention_mask, target_input_ids, target_attention_mask)
        result = {"query_embeddings": out.query_embeddings, "target_embeddings": out.target_embeddings}
        if self.corrector is not None and stale_target_embeddings is not None:
            result["corrected_embeddings"] = self.corrector(stale_target_embeddings)
        return result


class CacheRefreshCallback(TrainerCallback):
    """Re-embeds the whole corpus every ``cache_refresh_steps`` optimizer steps (ANCE-style refresh)."""

    def __init__(self, trainer: CorrectorTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._on_step_end(state.global_step)
        return control


class CorrectorTrainer(Trainer):
    """A :class:`~transformers.Trainer` for dual encoders with a stale cache and a corrector network.

    Args (beyond ``Trainer``'s):
        model: a :class:`RetrieverModel`, or a path / Hub id (a saved retriever or any ``AutoModel`` backbone).
        train_dataset: a :class:`RetrievalData` (queries + corpus), or a queries ``Dataset`` (``query_id``,
            ``query``, ``positive_ids``) together with ``corpus``.
        eval_dataset: a :class:`RetrievalData` or queries ``Dataset`` evaluated over the full corpus.
        corpus: ``Dataset`` with ``doc_id`` and ``text`` (taken from ``train_dataset`` when it is RetrievalData).
        cache: a :class:`StaleCache` for ``corpus`` (or a path to one); built with the starting model if omitted.
        corrector: a :class:`CorrectorModel` (or path); built from the arguments if omitted and one is needed.
        peft_config: a ``peft`` config (e.g. ``LoraConfig``) applied to the encoder tower(s).

    Pluggable parts are class attributes: ``collator_class``, ``corrector_class``, ``cache_class``.
    """

    collator_class = CorrectorDataCollator
    corrector_class = CorrectorModel
    cache_class = StaleCache
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean; Trainer divides by the GA steps

    def __init__(
        self,
        model: RetrieverModel | str | None = None,
        args: CorrectorTrainingArguments | None = None,
        data_collator=None,
        train_dataset: RetrievalData | datasets.Dataset | None = None,
        eval_dataset: RetrievalData | datasets.Dataset | None = None,
        processing_class=None,
        model_init=None,
        compute_metrics=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        optimizer_cls_and_kwargs=None,
        preprocess_logits_for_metrics=None,
        *,
        corpus: datasets.Dataset | None = None,
        cache: StaleCache | str | os.PathLike | None = None,
        corrector: CorrectorModel | str | None = None,
        peft_config: Any | None = None,
    ):
        if args is None:
            args = CorrectorTrainingArguments("corrector-trainer-output")
        if not isinstance(args, CorrectorTrainingArguments):
            raise ConfigError("args must be CorrectorTrainingArguments")
        if model is None:
            raise ConfigError("CorrectorTrainer needs a model (a RetrieverModel or a path / Hub id)")
        retriever = load_retriever(model) if isinstance(model, (str, os.PathLike)) else model
        if not isinstance(retriever, RetrieverModel):
            raise ConfigError(f"model must be a RetrieverModel or a path, got {type(retriever).__name__}")
        if processing_class is not None:
            retriever.tokenizer = processing_class
        if retriever.tokenizer is None:
            raise ConfigError("the retriever has no tokenizer; pass processing_class=AutoTokenizer.from_pretrained(...)")
        _check_tokenizer_fits(retriever)
        if peft_config is not None:
            retriever = _apply_peft(retriever, peft_config)
        self.uses_peft = peft_config is not None

        # data -------------------------------------------------------------------------------------------------------
        if isinstance(train_dataset, RetrievalData):
            corpus = train_dataset.corpus if corpus is None else corpus
            train_queries = train_dataset.queries
        else:
            train_queries = train_dataset
        if corpus is None:
            raise ConfigError("pass corpus= (doc_id, text) or a RetrievalData train_dataset")
        if len(corpus) == 0:
            raise CacheMismatchError("the corpus is empty")
        self.corpus = corpus
        self.corpus_texts: list[str] = list(corpus["text"])
        self.doc_ids: list[str] = list(corpus["doc_id"])
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        if len(self.doc_index) != len(self.doc_ids):
            raise CacheMismatchError("duplicate doc ids in the corpus")
        self.train_examples = prepare_train_examples(train_queries, self.doc_index) if train_queries is not None else None
        self.eval_queries = eval_dataset.queries if isinstance(eval_dataset, RetrievalData) else eval_dataset
        if args.num_negatives >= len(self.doc_ids):
            raise ConfigError(f"num_negatives={args.num_negatives} needs a corpus larger than {len(self.doc_ids)}")
        if self.train_examples is not None and args.num_negatives > 0:  # names the query that has too few
            pool = args.candidate_pool_size if args.candidate_index != "none" and not args.tele_negatives else None
            check_enough_negatives(self.train_examples, len(self.doc_ids), args.num_negatives, pool_size=pool)

        # corrector ----------------------------------------------------------------------------------------------------
        if isinstance(corrector, (str, os.PathLike)):
            corrector = self.corrector_class.from_pretrained(corrector)
        trains_corrector = args.uses_corrector and args.mines_negatives
        if args.uses_corrector and not trains_corrector:
            logger.info("num_negatives=0 (in-batch negatives only): no corrector is trained")
        if corrector is None and trains_corrector:
            corrector = self.corrector_class(
                CorrectorConfig(
                    embedding_dim=retriever.embedding_dim,
                    architecture=args.correction,
                    hidden_dim=args.corrector_hidden_dim,
                    num_layers=args.corrector_num_layers,
                    retriever_name_or_path=retriever.config.base_model_name_or_path,
                )
            )
        if corrector is not None and corrector.config.embedding_dim != retriever.embedding_dim:
            raise CacheMismatchError(f"corrector dimension {corrector.config.embedding_dim} != retriever dimension "
                                     f"{retriever.embedding_dim}")
        wrapper = CorrectorTrainingModel(retriever, corrector if trains_corrector else None)

        # cost counters and per-step metrics ------------------------------------------------------------------------
        self.cost = {"initial_cache_encodings": 0, "step_target_encodings": 0, "refresh_encodings": 0,
                     "num_refreshes": 0, "landmark_encodings": 0}
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._fallback_bad_logs = 0
        self.use_uncorrected_scores = False
        self.method_state: dict[str, Any] = {}

        if data_collator is None:
            data_collator = self.collator_class(
                tokenizer=retriever.tokenizer,
                query_max_length=args.query_max_length or retriever.config.query_max_length,
                query_prefix=retriever.config.query_prefix,
            )
        super().__init__(
            model=wrapper,
            args=args,
            data_collator=data_collator,
            train_dataset=self.train_examples,
            eval_dataset=self.eval_queries,  # evaluate() is ours; Trainer needs it set for eval_strategy != "no"
            processing_class=None,
            model_init=model_init,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        self.add_callback(CacheRefreshCallback(self))
        self.model_card_callback = ModelCardCallback(self, train_dataset, eval_dataset)  # fills the model card
        self.add_callback(self.model_card_callback)

        # cache ----------------------------------------------------------------------------------------------------------
        if isinstance(cache, (str, os.PathLike)):
            cache = self.cache_class.load(cache)
        if cache is None:
            logger.info("building the stale cache: encoding %d documents with the starting model", len(self.doc_ids))
            cache = self.cache_class.build(corpus, retriever, batch_size=args.cache_encode_batch_size,
                                           dtype=args.cache_dtype, device=self.args.device)
            if args.mines_negatives:  # with in-batch negatives only, the cache serves diagnostics, not training
                self.cost["initial_cache_encodings"] = len(self.doc_ids)
        cache.check_corpus(self.doc_ids)
        cache.check_model(retriever)
        self.cache = cache
        from ..methods import build_method_hooks  # Nyström, ANCE-Tele, candidate index

        self.method_hooks = build_method_hooks(self)

    # ---------------------------------------------------------------------------------------------------------------
    # helpers
    @property
    def retriever(self) -> RetrieverModel:
        return self.accelerator.unwrap_model(self.model).retriever

    @property
    def corrector(self) -> CorrectorModel | None:
        return self.accelerator.unwrap_model(self.model).corrector

    def cache_rows(self, start: int, stop: int) -> torch.Tensor:
        return self.cache.matrix()[start:stop]

    def score_transform(self):
        """The map applied to stale rows before scoring: the corrector, a method hook's map, or None."""
        if self.use_uncorrected_scores:
            return None
        hook = self.method_hooks.get("transform")
        if hook is not None:
            return hook()
        corrector = self.corrector
        if corrector is None:
            return None
        device = next(corrector.parameters()).device

        def apply(rows: torch.Tensor) -> torch.Tensor:
            was_training = corrector.training
            corrector.eval()
            try:
                return corrector(rows.to(device))
            finally:
                corrector.train(was_training)

        return apply

    def encode_corpus(self, desc: str = "re-embed corpus") -> torch.Tensor:
        """Encode the whole corpus with the current g; sharded across processes and gathered."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        retriever = self.retriever
        mine = list(range(rank, len(self.corpus_texts), world))
        emb = retriever.encode_targets([self.corpus_texts[i] for i in mine], batch_size=self.args.cache_encode_batch_size,
                                       max_length=self.args.target_max_length, device=self.args.device,
                                       show_progress_bar=self.accelerator.is_main_process)
        if world == 1:
            return emb
        per = math.ceil(len(self.corpus_texts) / world)
        padded = torch.zeros(per, emb.shape[1])
        padded[: emb.shape[0]] = emb
        gathered = self.accelerator.gather(padded.to(self.args.device)).cpu().reshape(world, per, -1)
        full = torch.empty(len(self.corpus_texts), emb.shape[1])
        for r in range(world):
            rows = list(range(r, len(self.corpus_texts), world))
            full[rows] = gathered[r, : len(rows)]
        return full

    def refresh_cache(self, step: int) -> None:
        """Re-embed the corpus and replace the cache (counts toward the re-embedding cost)."""
        self.cache.replace_all(self.encode_corpus(), step)
        self.cost["refresh_encodings"] += len(self.doc_ids)
        self.cost["num_refreshes"] += 1
        if "on_refresh" in self.method_hooks:
            self.method_hooks["on_refresh"](step)

    def _on_step_end(self, step: int) -> None:
        r = self.args.cache_refresh_steps
        if r and step > 0 and step % r == 0:
            self.refresh_cache(step)
        if "on_step_end" in self.method_hooks:
            self.method_hooks["on_step_end"](step)

    # ---------------------------------------------------------------------------------------------------------------
    # optimisation
    def create_optimizer(self, model=None):
        """One AdamW with the encoders and the corrector in separate parameter groups (own learning rates)."""
        if self.optimizer is not None:
            return self.optimizer
        wrapper = self.model
        corrector_params = [p for n, p in wrapper.named_parameters() if n.startswith("corrector.") and p.requires_grad]
        encoder_named = [(n, p) for n, p in wrapper.named_parameters() if not n.startswith("corrector.") and p.requires_grad]
        no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
        groups = [
            {"params": [p for n, p in encoder_named if not n.endswith(no_decay)], "weight_decay": self.args.weight_decay,
             "lr": self.args.learning_rate, "group": "encoder"},
            {"params": [p for n, p in encoder_named if n.endswith(no_decay)], "weight_decay": 0.0,
             "lr": self.args.learning_rate, "group": "encoder"},
        ]
        if corrector_params:
            groups.append({"params": corrector_params, "weight_decay": 0.0, "lr": self.args.corrector_learning_rate,
                           "group": "corrector"})
        groups = [g for g in groups if g["params"]]
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args, wrapper)
        optimizer_kwargs.pop("lr", None)
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Per-group schedule: encoders are frozen (factor 0) during corrector warm-up, then follow
        ``lr_scheduler_type`` (linear / constant / cosine, with ``warmup_steps``); the corrector stays constant."""
        if self.lr_scheduler is not None:
            return self.lr_scheduler
        optimizer = optimizer or self.optimizer
        frozen = self.args.corrector_warmup_steps
        warmup = self.args.get_warmup_steps(num_training_steps)
        kind = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))
        total = max(num_training_steps - frozen, 1)

        def encoder_factor(step: int) -> float:
            if step < frozen:
                return 0.0
            s = step - frozen
            if warmup and s < warmup:
                return (s + 1) / warmup if kind != "constant" else 1.0
            if kind.startswith("constant"):
                return 1.0
            progress = min(1.0, (s - warmup) / max(1, total - warmup))
            if kind.startswith("cosine"):
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return max(0.0, 1.0 - progress)

        lambdas = [(lambda step: 1.0) if g.get("group") == "corrector" else encoder_factor for g in optimizer.param_groups]
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # ---------------------------------------------------------------------------------------------------------------
    # the training step
    def choose_negatives(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, k) cache rows of the chosen negatives for the batch's queries.

        Queries are encoded without dropout (eval mode) for this choice, so it depends on the model alone, not on
        the dropout RNG: the same on every process and after a resume.
        """
        args = self.args
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
        if "select" in self.method_hooks:
            return self.method_hooks["select"](q, exclude, keys)
        candidates = self.method_hooks["candidates"](q) if "candidates" in self.method_hooks else None
        selection = select_negatives(
            q, self.cache.rows if candidates is not None else self.cache_rows, args.num_negatives, exclude=exclude,
            method=args.negative_sampling, temperature=args.sampling_temperature, noise_keys=keys, seed=args.seed,
            step=self.state.global_step, num_rows=len(self.cache), chunk_size=args.corrector_chunk_size,
            transform=self.score_transform(), candidates=candidates,
        )
        return selection.indices

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        args = self.args
        device = inputs["query_input_ids"].device
        b = inputs["query_input_ids"].shape[0]
        pos = inputs["positive_rows"].cpu()
        neg = self.choose_negatives(inputs).cpu() if args.num_negatives > 0 else torch.zeros((b, 0), dtype=torch.long)
        targets, inverse = torch.unique(torch.cat([pos[:, None], neg], 1).reshape(-1), return_inverse=True)
        inverse = inverse.reshape(b, -1)
        tok = self.retriever.tokenize([self.corpus_texts[i] for i in targets.tolist()], "target", args.target_max_length)
        stale_rows = self.cache.rows(targets)  # g'(y) of the step's targets: corrector input and staleness logs
        stale = stale_rows.to(device) if self.corrector is not None else None
        out = model(
            query_input_ids=inputs["query_input_ids"],
            query_attention_mask=inputs["query_attention_mask"],
            target_input_ids=tok["input_ids"].to(device),
            target_attention_mask=tok["attention_mask"].to(device),
            stale_target_embeddings=stale,
        )
        q, t = out["query_embeddings"], out["target_embeddings"]
        self.cost["step_target_encodings"] += int(targets.numel()) * self.accelerator.num_processes

        # candidate sets: own positive + own negatives (+ every other target of the step), never own other positives
        u = targets.numel()
        own = torch.zeros(b, u, dtype=torch.bool)
        own.scatter_(1, inverse, True)
        mask = torch.ones(b, u, dtype=torch.bool) if args.in_batch_negatives else own.clone()
        excl = inputs["exclude_rows"].cpu()
        is_pos = (targets[None, :, None] == excl[:, None, :]).any(-1)  # (b, u): target is one of the query's positives
        labels = inverse[:, 0]
        mask &= ~is_pos
        mask[torch.arange(b), labels] = True
        mask, labels, own = mask.to(device), labels.to(device), own.to(device)

        loss_task = task_loss(q, t, labels, mask, args.temperature)
        warm = self.state.global_step < args.corrector_warmup_steps
        loss = loss_task * (0.0 if warm else 1.0)
        corrected = out.get("corrected_embeddings")
        parts = {}
        if corrected is not None:
            parts = corrector_loss(q, t, corrected, own & mask, args.temperature, args.corrector_loss, args.corrector_mse_weight)
            loss = loss + parts["corrector"]
        # the tensors first, so that the error names the source of a NaN rather than the loss it spreads to
        self._check_finite(q, "query embeddings")
        self._check_finite(t, "target embeddings")
        if corrected is not None:
            self._check_finite(corrected, "corrector output")
        self._check_finite(loss, "loss")
        for name, value in parts.items():  # after the checks: a skipped step logs no NaN
            self._metrics[f"{name}_loss" if name == "corrector" else name].append(float(value.detach()))
        self._metrics["task_loss"].append(float(loss_task.detach()))
        self._log_staleness(q, t, targets, stale_rows, corrected, neg, inverse)

        if args.cache_write_back:
            self._write_back(targets, t.detach())
        if "after_step" in self.method_hooks:
            self.method_hooks["after_step"](targets, t.detach(), q.detach(), inputs)
        return (loss, out) if return_outputs else loss

    def _check_finite(self, tensor: torch.Tensor, name: str) -> None:
        if torch.isfinite(tensor.detach()).all():
            return
        step = self.state.global_step
        message = f"non-finite {name} at step {step + 1} (global_step {step})"
        if self.args.nonfinite_action == "skip":
            logger.warning("%s (skipping the step)", message)
            raise _SkipStep()
        last = last_complete_checkpoint(self.args.output_dir) if self.args.should_save else None
        raise NonFiniteError(f"{message}; " + (f"the last good checkpoint is {last}" if last else
                                                f"no complete checkpoint in {self.args.output_dir} yet"))

    def training_step(self, model, inputs, num_items_in_batch=None):
        try:
            return super().training_step(model, inputs, num_items_in_batch)
        except _SkipStep:
            # raised before backward: this micro-batch adds no gradient; earlier micro-batches of the same
            # accumulation window keep theirs
            self._metrics["skipped_steps"].append(1.0)
            return torch.zeros((), device=self.args.device)

    @torch.no_grad()
    def _log_staleness(self, q, t, targets, stale_rows, corrected, neg, inverse) -> None:
        """Log cos(g', g), cos(h(g'), g) and the overlap of the chosen negatives with the fresh top-k.

        ``targets`` are the step's cache rows (positives and chosen negatives); ``stale_rows`` their cached g'(y).
        """
        stale = stale_rows.to(t.device)
        t32 = t.detach().float()
        cos_stale = F.cosine_similarity(stale, t32, dim=-1).mean()
        self._metrics["staleness_cos_stale"].append(float(cos_stale))
        if corrected is not None:
            cos_corr = F.cosine_similarity(corrected.detach().float(), t32, dim=-1).mean()
            self._metrics["staleness_cos_corrected"].append(float(cos_corr))
        k = neg.shape[1]
        if k and stale_rows.shape[0] > k + 1:
            # overlap of the chosen negatives with the top-k under fresh scores, among the step's targets
            fresh = q.detach().float() @ t32.T
            own_pos = inverse[:, :1].to(fresh.device)
            fresh.scatter_(1, own_pos, float("-inf"))
            top_fresh = fresh.topk(k, dim=1).indices.cpu()
            chosen = inverse[:, 1:]
            overlap = (chosen[:, :, None] == top_fresh[:, None, :]).any(-1).float().mean()
            self._metrics["negatives_overlap_fresh"].append(float(overlap))

    def _write_back(self, targets: torch.Tensor, fresh: torch.Tensor) -> None:
        step = self.state.global_step
        if self.accelerator.num_processes > 1:
            rows = self.accelerator.pad_across_processes(targets.to(self.args.device), dim=0, pad_index=-1)
            emb = self.accelerator.pad_across_processes(fresh.float(), dim=0)
            rows, emb = self.accelerator.gather(rows).cpu(), self.accelerator.gather(emb).cpu()
            keep = rows >= 0
            targets, fresh = rows[keep], emb[keep]
        self.cache.update(targets.cpu(), fresh.float().cpu(), step)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged loss components and staleness statistics to Trainer's logs."""
        if self._metrics and "loss" in logs:
            for name, values in self._metrics.items():
                logs[name] = round(sum(values) / len(values), 6) if name != "skipped_steps" else len(values)
            self._check_corrector_health(logs)
            self._metrics.clear()
        super().log(logs, start_time)

    def _check_corrector_health(self, logs: dict[str, float]) -> None:
        if "staleness_cos_corrected" not in logs or self.state.global_step < self.args.corrector_warmup_steps:
            return
        worse = logs["staleness_cos_corrected"] < logs["staleness_cos_stale"]
        self._fallback_bad_logs = self._fallback_bad_logs + 1 if worse else 0
        patience = self.args.corrector_fallback_patience or 3
        if worse and self._fallback_bad_logs >= patience:
            logger.warning("step %d: the corrector makes embeddings worse (cos(h(g'), g)=%.4f < cos(g', g)=%.4f) for %d "
                           "logging steps", self.state.global_step, logs["staleness_cos_corrected"],
                           logs["staleness_cos_stale"], self._fallback_bad_logs)
            if self.args.corrector_fallback_patience and not self.use_uncorrected_scores:
                logger.warning("falling back to uncorrected scores until the corrector recovers")
                self.use_uncorrected_scores = True
        elif not worse and self.use_uncorrected_scores:
            logger.info("step %d: corrector recovered; using corrected scores again", self.state.global_step)
            self.use_uncorrected_scores = False
        logs["corrector_fallback"] = float(self.use_uncorrected_scores)

    # ---------------------------------------------------------------------------------------------------------------
    # evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """nDCG@10, Recall@10/100 and MRR@10 of held-out queries over the whole corpus.

        ``eval_corpus_embeddings`` picks the corpus representation(s): ``fresh`` (re-encoded now; its metrics carry
        no infix), ``stale`` (the cache) and ``corrected`` (h applied to the cache), side by side.
        """
        queries = eval_dataset.queries if isinstance(eval_dataset, RetrievalData) else eval_dataset
        queries = queries if queries is not None else self.eval_queries
        if queries is None:
            raise ConfigError("evaluate() needs an eval_dataset (RetrievalData or a queries Dataset)")
        metrics = self.retrieval_metrics(queries, self.args.eval_corpus_list, prefix=metric_key_prefix)
        metrics[f"{metric_key_prefix}_reembedding_cost"] = self.total_reembedding_cost()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)
        return metrics

    def corpus_embeddings(self, kind: str) -> torch.Tensor:
        """The corpus as ``fresh`` (re-encoded), ``stale`` (the cache) or ``corrected`` (h(cache)) embeddings."""
        if kind == "fresh":
            return self.encode_corpus("encode corpus (eval)")
        if kind == "stale":
            return self.cache.matrix().float()
        transform = self.score_transform()
        if transform is None:
            return self.cache.matrix().float()
        with torch.no_grad():
            return torch.cat([transform(chunk).float().cpu() for _, chunk in
                              self.cache.iter_chunks(self.args.corrector_chunk_size)])

    def retrieval_metrics(self, queries: datasets.Dataset, kinds: list[str], prefix: str = "eval") -> dict[str, float]:
        qrels = {qid: {d: 1 for d in pos} for qid, pos in zip(queries["query_id"], queries["positive_ids"])}
        q = self.retriever.encode_queries(list(queries["query"]), batch_size=self.args.eval_batch_size_encode,
                                          max_length=self.args.query_max_length, device=self.args.device)
        out: dict[str, float] = {}
        for kind in kinds:
            values = retrieval_metrics(q, self.corpus_embeddings(kind), list(queries["query_id"]), self.doc_ids, qrels)
            infix = "" if kind == "fresh" else f"{kind}_"
            out.update({f"{prefix}_{infix}{name}": round(v, 5) for name, v in values.items()})
        return out

    def total_reembedding_cost(self) -> int:
        """Target-encoder forward passes spent on the corpus: initial cache + per-step encodings + refreshes."""
        c = self.cost
        return c["initial_cache_encodings"] + c["step_target_encodings"] + c["refresh_encodings"] + c["landmark_encodings"]

    # ---------------------------------------------------------------------------------------------------------------
    # saving and resuming
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the retriever (``from_pretrained``-loadable), the corrector in ``corrector/`` and the arguments (JSON).

        Written into a temporary sibling folder first and then moved into place (atomically unless ``output_dir``
        holds other things, such as checkpoints: see :func:`~hf_corrector.training.checkpoints.publish_dir`).
        """
        output_dir = output_dir or self.args.output_dir
        if not self.args.should_save:
            return
        final = Path(output_dir).resolve()
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        try:
            self._save_model_files(str(tmp))
            publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _save_model_files(self, output_dir: str) -> None:
        os.makedirs(output_dir, exist_ok=True)
        retriever = self.retriever
        if self.uses_peft:
            _save_peft_retriever(retriever, output_dir)
        else:
            retriever.save_pretrained(output_dir)
        corrector = self.corrector
        if corrector is not None:
            corrector.config.retriever_name_or_path = retriever.config.base_model_name_or_path
            corrector.save_pretrained(os.path.join(output_dir, "corrector"))
        Path(output_dir, "training_args.json").write_text(self.args.to_json_string())
        Path(output_dir, "reembedding_cost.json").write_text(json.dumps(
            {**self.cost, "total": self.total_reembedding_cost(), "num_docs": len(self.doc_ids)}, indent=2))

    def _save_checkpoint(self, model, trial):
        """Trainer's checkpoint plus the cache and this trainer's extra state (cost counters, method state).

        The folder is marked complete (``checkpoint_complete.json``) only at the very end, and older checkpoints are
        rotated out (``save_total_limit``) only after that, so a crash at any point leaves a complete checkpoint.
        """
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
        self.cache.save(folder / CACHE_DIR)
        self._save_extra_state(folder)
        write_checkpoint_marker(folder, self.state.global_step)
        rotate_checkpoints(output_dir=str(folder.parent), save_total_limit=limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self._push_pending_checkpoint()

    # ---------------------------------------------------------------------------------------------------------------
    # Hub
    @property
    def model_card_data(self):
        """The :class:`~hf_corrector.hub.CardData` of the cards (set ``license``, ``cache_repo_id``... on it)."""
        return self.model_card_callback.card_data

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Our retriever card in ``output_dir/README.md`` and the corrector card in ``output_dir/corrector/README.md``."""
        if not self.is_world_process_zero():
            return
        write_model_cards(self, self.args.output_dir, language=language, license=license, tags=tags,
                          model_name=model_name, finetuned_from=finetuned_from, dataset=dataset)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Deferred to the end of ``_save_checkpoint`` (the cache and marker are written after Trainer calls this);
        see :func:`hf_corrector.hub.callbacks.push_checkpoint` (pushes ``corrector/`` and the cards, never the pickled
        ``training_args.bin`` that would carry ``hub_token``)."""
        self._pending_hub_push = checkpoint_folder

    def _push_pending_checkpoint(self) -> None:
        folder, self._pending_hub_push = getattr(self, "_pending_hub_push", None), None
        if folder is not None and os.path.isdir(folder):
            push_checkpoint(self, folder)

    def _save_extra_state(self, folder: Path) -> None:
        tensors = {}
        state = {"cost": self.cost, "use_uncorrected_scores": self.use_uncorrected_scores,
                 "fallback_bad_logs": self._fallback_bad_logs, "global_step": self.state.global_step}
        if "state_dict" in self.method_hooks:
            extra_json, extra_tensors = self.method_hooks["state_dict"]()
            state["method"] = extra_json
            tensors.update(extra_tensors)
        tmp = folder / f".{EXTRA_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, folder / EXTRA_STATE)
        if tensors:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / (EXTRA_TENSORS + ".tmp")))
            os.replace(folder / (EXTRA_TENSORS + ".tmp"), folder / EXTRA_TENSORS)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        wrapper = self.accelerator.unwrap_model(model if model is not None else self.model)
        folder = Path(resume_from_checkpoint)
        if self.uses_peft:
            _load_peft_retriever(wrapper.retriever, folder)
        else:
            state = load_file(str(folder / "model.safetensors"))
            missing, unexpected = wrapper.retriever.load_state_dict(state, strict=False)
            if unexpected or [m for m in missing if "position_ids" not in m]:
                raise CacheMismatchError(f"{folder}: retriever weights do not match (missing {missing[:3]}, "
                                         f"unexpected {unexpected[:3]})")
        if wrapper.corrector is not None:
            wrapper.corrector.load_state_dict(load_file(str(folder / "corrector" / "model.safetensors")))

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
        self._load_extra_state(Path(self.state.best_model_checkpoint))

    def _load_extra_state(self, folder: Path) -> None:
        if (folder / CACHE_DIR).exists():
            cache = self.cache_class.load(folder / CACHE_DIR)
            cache.check_corpus(self.doc_ids)
            self.cache = cache
        if (folder / EXTRA_STATE).exists():
            state = json.loads((folder / EXTRA_STATE).read_text())
            self.cost.update(state.get("cost", {}))
            self.use_uncorrected_scores = state.get("use_uncorrected_scores", False)
            self._fallback_bad_logs = state.get("fallback_bad_logs", 0)
            if "load_state_dict" in self.method_hooks:
                tensors = load_file(str(folder / EXTRA_TENSORS)) if (folder / EXTRA_TENSORS).exists() else {}
                self.method_hooks["load_state_dict"](state.get("method", {}), tensors)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """Trainer's ``train`` that also restores the cache and the trainer's extra state on resume."""
        if resume_from_checkpoint is True:  # the newest checkpoint whose save finished (incomplete ones are skipped)
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ConfigError(f"no complete checkpoint found in {self.args.output_dir} to resume from")
        elif resume_from_checkpoint:
            verify_checkpoint(resume_from_checkpoint)  # CacheCorruptError naming the folder if its save did not finish
        if resume_from_checkpoint:
            self._load_extra_state(Path(resume_from_checkpoint))
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


def _check_tokenizer_fits(retriever: RetrieverModel) -> None:
    """A tokenizer with more tokens than the encoder's embedding matrix would fail deep in torch: fail early."""
    size = len(retriever.tokenizer)
    for name in ("encoder", "query_encoder"):
        tower = getattr(retriever, name, None)
        try:
            rows = getattr(tower.get_input_embeddings(), "num_embeddings", None) if tower is not None else None
        except (AttributeError, NotImplementedError):
            rows = None
        if rows is not None and size > rows:
            raise ConfigError(f"the tokenizer has {size} tokens but the retriever's {name} embeds only {rows} token ids "
                              f"(a tokenizer of another model?); use the encoder's own tokenizer or resize its embeddings")


class _SkipStep(Exception):
    """Internal: abandon the current step (nonfinite_action='skip')."""


def _apply_peft(retriever: RetrieverModel, peft_config) -> RetrieverModel:
    from peft import get_peft_model

    retriever.encoder = get_peft_model(retriever.encoder, peft_config)
    if retriever.query_encoder is not None:
        retriever.query_encoder = get_peft_model(retriever.query_encoder, peft_config)
    return retriever


def _save_peft_retriever(retriever: RetrieverModel, output_dir: str) -> None:
    """Save merged weights (loadable without peft) and the adapters (for resuming)."""
    import copy

    from peft import get_peft_model_state_dict

    adapters = {"encoder": get_peft_model_state_dict(retriever.encoder)}
    if retriever.query_encoder is not None:
        adapters["query_encoder"] = get_peft_model_state_dict(retriever.query_encoder)
    os.makedirs(os.path.join(output_dir, PEFT_DIR), exist_ok=True)
    for name, sd in adapters.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, os.path.join(output_dir, PEFT_DIR, f"{name}.safetensors"))
    merged = copy.deepcopy(retriever)
    merged.encoder = merged.encoder.merge_and_unload()
    if merged.query_encoder is not None:
        merged.query_encoder = merged.query_encoder.merge_and_unload()
    merged.save_pretrained(output_dir)


def _load_peft_retriever(retriever: RetrieverModel, folder: Path) -> None:
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(retriever.encoder, load_file(str(folder / PEFT_DIR / "encoder.safetensors")))
    if retriever.query_encoder is not None:
        set_peft_model_state_dict(retriever.query_encoder, load_file(str(folder / PEFT_DIR / "query_encoder.safetensors")))
