"""The reader-supervised training step and evaluation (``reader_loss`` = ``pdist`` / ``emdr2`` / ``replug``).

No passage is labelled relevant. For each question of the batch:

1. **candidates**: the library's sampler chooses ``num_negatives`` rows from the (corrected) cache, exactly as it
   chooses hard negatives (no positive to exclude);
2. **forward**: the question and the distinct candidates are encoded fresh (f and g, one ``forward`` of the wrapped
   model), the candidates' stale rows go through the corrector h;
3. **reader**: ``log p(answer | question, passage)`` for every (question, candidate) (frozen: no gradient);
4. **loss components**: ``reader_loss`` (:mod:`hf_corrector.training.reader_losses`, trains f and g towards the
   reader's posterior over the candidates), the corrector loss on the fresh candidate embeddings (trains h, as in
   supervised training) and, with a jointly trained reader, ``reader_lm_loss``.

:meth:`ReaderStep.evaluate` gives answer recall@k (an answer string in one of the top-k passages, for each corpus
representation of ``eval_corpus_embeddings``) and the exact match of the reader's generated answer.

Example:
    >>> step = ReaderStep(reader, args, cache_manager, retriever, examples)  # doctest: +SKIP
    >>> loss, out, logged = step.compute_loss(model, inputs, candidates, step=0)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import torch

from ..errors import ConfigError, DataFormatError
from ..evaluation.metrics import exact_search
from ..models.reader import Reader
from .losses import corrector_loss
from .nonfinite import check_finite
from .reader_config import eval_top_k
from .reader_losses import reader_losses
from .staleness import staleness_metrics

logger = logging.getLogger(__name__)

READER_DIR = "reader"


def prepare_open_qa_examples(queries: datasets.Dataset) -> datasets.Dataset:
    """One example per question, in the trainer's example layout with no positive (``positive_row`` -1,
    ``positive_rows`` / ``negative_rows`` empty) and the ``answers``."""
    answers = list(queries["answers"])
    for qid, a in zip(queries["query_id"], answers):
        if not a:
            raise DataFormatError(f"question {qid!r} has no answer (reader-supervised training needs 'answers')")
    n = len(queries)
    return datasets.Dataset.from_dict({
        "example_id": list(range(n)), "query_id": list(queries["query_id"]), "query": list(queries["query"]),
        "positive_row": [-1] * n, "positive_rows": [[] for _ in range(n)], "negative_rows": [[] for _ in range(n)],
        "answers": answers})


def check_reader_data(args: Any, examples: datasets.Dataset | None) -> None:
    """Questions with answers need ``reader_loss``; ``reader_loss`` needs questions with answers."""
    if args.reader_loss == "none" and args.reader_learning_rate is not None:  # refused here: a value alone is valid
        raise ConfigError("reader_learning_rate set but reader_loss='none' (no reader is trained): set reader_loss "
                          "to 'pdist', 'emdr2' or 'replug', or drop reader_learning_rate")
    if examples is None:
        return
    open_qa = "answers" in examples.column_names
    if open_qa and args.reader_loss == "none":
        raise ConfigError("the training data has questions with 'answers' and no positives: supervised training has "
                          "nothing to learn from; set reader_loss='pdist', 'emdr2' or 'replug' (with reader_model)")
    if not open_qa and args.reader_loss != "none":
        raise ConfigError(f"reader_loss={args.reader_loss!r} needs questions with an 'answers' column and no "
                          "positive_ids (load them with hf_corrector.data.open_qa.load_open_qa); this data has "
                          "labelled positives: use reader_loss='none' for supervised training")


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: list[str]) -> bool:
    return normalize_answer(prediction) in {normalize_answer(a) for a in answers}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def has_answer(passage: str, answers: list[str]) -> bool:
    """An answer occurs in the passage as a whole-word sequence (DPR's answer recall; words = ``\\w+``, lower
    case: ``aix_platform`` is found in ``def aix_platform(x)``, not in ``aix_platform_info``)."""
    words = _words(passage)
    for answer in answers:
        target = _words(answer)
        n = len(target)
        if n and any(words[i:i + n] == target for i in range(len(words) - n + 1)):
            return True
    return False


def load_reader(args: Any, reader: Reader | None, device) -> Reader:
    """The reader the arguments name (or the one given), frozen unless ``reader_learning_rate`` is set."""
    trainable = args.reader_learning_rate is not None
    if reader is None:
        if args.reader_model is None:
            raise ConfigError(f"reader_loss={args.reader_loss!r} needs a reader: set reader_model (a path, a Hub id "
                              "or 'smollm2') or pass CorrectorTrainer(reader=Reader.from_pretrained(...))")
        reader = Reader.from_pretrained(args.reader_model, gguf_file=args.reader_gguf_file,
                                        prompt_template=args.reader_prompt_template, trainable=trainable,
                                        batch_size=args.reader_batch_size,
                                        passage_max_length=args.reader_passage_max_length)
    elif not isinstance(reader, Reader):
        raise ConfigError(f"reader must be a hf_corrector Reader, got {type(reader).__name__}")
    elif reader.trainable != trainable:
        raise ConfigError(f"the given reader is {'trainable' if reader.trainable else 'frozen'} but "
                          f"reader_learning_rate={args.reader_learning_rate!r} says "
                          f"{'train it' if trainable else 'freeze it'}: make them agree")
    reader.model.to(device)
    return reader


class ReaderStep:
    """Reader-supervised loss and evaluation (see the module docstring).

    Args:
        reader: the :class:`Reader`.
        args: the training arguments (``reader_*``, ``temperature``, ``corrector_*``, ``nonfinite_action``).
        cache: the :class:`~hf_corrector.cache.manager.CacheManager` (candidate texts, stale rows, cost).
        retriever: the :class:`~hf_corrector.models.retriever.RetrieverModel` (tokenisation, query encoding).
        examples: the training examples (``example_id``, ``query``, ``answers``) or None.
    """

    def __init__(self, reader: Reader, args: Any, cache, retriever, examples: datasets.Dataset | None):
        self.reader, self.args, self.cache, self.retriever = reader, args, cache, retriever
        self.questions = list(examples["query"]) if examples is not None else []
        self.answers = [list(a) for a in examples["answers"]] if examples is not None else []
        self.reduction = "mean" if args.reader_loss == "pdist" else "sum"  # Atlas: negative log-perplexity

    @property
    def forward_passes(self) -> int:
        return self.reader.forward_passes

    def reader_scores(self, example_ids: list[int], rows: torch.Tensor) -> torch.Tensor:
        """(B, K) reader log-likelihoods of each example's first answer given each candidate row."""
        b, k = rows.shape
        questions = [self.questions[e] for e in example_ids for _ in range(k)]
        answers = [self.answers[e][0] for e in example_ids for _ in range(k)]
        passages = self.cache.texts_of(rows.reshape(-1))
        return self.reader.score(questions, passages, answers, reduction=self.reduction).reshape(b, k)

    def compute_loss(self, model, inputs: dict[str, torch.Tensor], candidates: torch.Tensor, step: int
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, float]]:
        """(loss, model outputs, logged values) of one batch with ``candidates`` (B, K) cache rows."""
        args = self.args
        device = inputs["query_input_ids"].device
        targets, inverse = torch.unique(candidates.reshape(-1), return_inverse=True)
        inverse = inverse.reshape(candidates.shape)
        tok = self.retriever.tokenize(self.cache.texts_of(targets), "target", args.target_max_length)
        stale_rows = self.cache.rows(targets)
        uses_corrector = _unwrap(model).corrector is not None
        out = model(query_input_ids=inputs["query_input_ids"], query_attention_mask=inputs["query_attention_mask"],
                    target_input_ids=tok["input_ids"].to(device), target_attention_mask=tok["attention_mask"].to(device),
                    stale_target_embeddings=stale_rows.to(device) if uses_corrector else None)
        q, t, corrected = out["query_embeddings"], out["target_embeddings"], out.get("corrected_embeddings")
        inv = inverse.to(device)
        scores = torch.einsum("bd,bkd->bk", q.float(), t.float()[inv]) / args.temperature
        example_ids = [int(e) for e in inputs["example_ids"].tolist()]
        logp = self.reader_scores(example_ids, candidates).to(device)
        losses = reader_losses(args.reader_loss, scores, logp, args.reader_temperature, self.reader.trainable)
        warm = step < args.corrector_warmup_steps
        loss = losses["reader_loss"] * (0.0 if warm else 1.0) + losses.get("reader_lm_loss", 0.0)
        if corrected is not None:
            own = torch.zeros(q.shape[0], targets.numel(), dtype=torch.bool, device=device)
            own.scatter_(1, inv, True)
            parts = corrector_loss(q, t, corrected, own, args.temperature, args.corrector_loss,
                                   args.corrector_mse_weight)
            losses.update({"corrector_loss" if n == "corrector" else n: v for n, v in parts.items()})
            loss = loss + losses["corrector_loss"]
        for tensor, name in ((q, "query embeddings"), (t, "target embeddings"), (corrected, "corrector output"),
                             (logp, "reader log-likelihoods"), (loss, "loss")):
            if tensor is not None:
                check_finite(tensor, name, step, args.nonfinite_action, args.output_dir, args.should_save)
        logged = {name: float(value.detach()) for name, value in losses.items()}
        logged.update(staleness_metrics(q, t, stale_rows, corrected, inverse[:, :1]))
        with torch.no_grad():  # how often the retriever's best candidate is the reader's best
            logged["reader_agreement@1"] = float((scores.argmax(1) == logp.argmax(1)).float().mean())
        self.cache.record_step(targets, t.detach(), step)
        return loss, out, logged

    # -- evaluation -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, queries: datasets.Dataset, encode_queries: Callable[[list[str]], torch.Tensor],
                 corpus_embeddings: Callable[[str], torch.Tensor], kinds: list[str], prefix: str = "eval"
                 ) -> dict[str, float]:
        """``{prefix}_answer_recall@k`` per corpus representation (``fresh`` without infix, else
        ``{prefix}_{kind}_answer_recall@k``), ``{prefix}_exact_match`` (the reader's answer from the top
        ``reader_eval_passages`` fresh passages) and ``{prefix}_reader_forward_passes`` (cost so far)."""
        if "answers" not in queries.column_names:
            raise DataFormatError("evaluating a reader-supervised run needs questions with an 'answers' column")
        ks = eval_top_k(self.args)
        questions, answers = list(queries["query"]), [list(a) for a in queries["answers"]]
        q = encode_queries(questions)
        texts = self.cache.texts
        metrics: dict[str, float] = {}
        top_fresh = None
        for kind in kinds:
            _, rows = exact_search(q, corpus_embeddings(kind), max(ks + [self.args.reader_eval_passages]))
            rows = rows.cpu()
            if kind == "fresh" or top_fresh is None:
                top_fresh = rows
            hits = torch.tensor([[has_answer(texts[r], a) for r in row] for row, a in zip(rows.tolist(), answers)])
            infix = "" if kind == "fresh" else f"{kind}_"
            for k in ks:
                metrics[f"{prefix}_{infix}answer_recall@{k}"] = float(hits[:, :k].any(1).float().mean())
        metrics[f"{prefix}_exact_match"] = self.exact_match(questions, answers, top_fresh)
        metrics[f"{prefix}_reader_forward_passes"] = float(self.forward_passes)
        return metrics

    def exact_match(self, questions: list[str], answers: list[list[str]], rows: torch.Tensor) -> float:
        """Share of questions whose generated answer matches one of theirs (from the best of the top-N passages,
        the one whose generated answer the reader finds most likely)."""
        n = self.args.reader_eval_passages
        flat_q = [qq for qq in questions for _ in range(n)]
        flat_p = [self.cache.texts[r] for row in rows[:, :n].tolist() for r in row]
        generated = self.reader.generate(flat_q, flat_p)
        if n > 1:
            logp = self.reader.score(flat_q, flat_p, [g or "?" for g in generated], reduction="mean").reshape(-1, n)
            best = logp.argmax(1).tolist()
            generated = [generated[i * n + j] for i, j in enumerate(best)]
        return sum(exact_match(g, a) for g, a in zip(generated, answers)) / max(len(questions), 1)

    # -- checkpoints ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"forward_passes": self.reader.forward_passes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reader.forward_passes = int(state.get("forward_passes", 0))

    def save(self, folder: str | Path) -> None:
        """A jointly trained reader's weights under ``reader/`` (a frozen one is not saved: it did not change)."""
        if self.reader.trainable:
            self.reader.save_pretrained(Path(folder) / READER_DIR)

    def load(self, folder: str | Path) -> None:
        path = Path(folder) / READER_DIR / "model.safetensors"
        if self.reader.trainable:
            if not path.exists():
                raise ConfigError(f"{folder}: no {READER_DIR}/model.safetensors for the jointly trained reader")
            from safetensors.torch import load_file

            state = load_file(str(path), device=str(self.reader.device))
            missing, _ = self.reader.model.load_state_dict(state, strict=False)
            if [m for m in missing if m not in getattr(self.reader.model, "_tied_weights_keys", []) or []]:
                logger.debug("reader weights not in the checkpoint (tied): %s", missing)


def _unwrap(model):
    return getattr(model, "module", model)
