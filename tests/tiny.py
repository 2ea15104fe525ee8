"""Tiny local models and data for fast tests (no downloads)."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from hf_corrector import RetrievalData, RetrieverConfig, RetrieverModel

REPO_ROOT = Path(__file__).resolve().parents[1]
SCIFACT = REPO_ROOT.parent / "shared" / "data" / "scifact"
WORDS = ("cell protein gene cancer virus drug trial brain blood heart lung liver immune dose risk mouse human "
         "growth signal receptor enzyme tumor therapy vaccine infection mutation pathway plasma insulin kidney").split()


def tiny_tokenizer(tmp_path: Path | None = None) -> PreTrainedTokenizerFast:
    """A word-level BERT-style tokenizer over the synthetic vocabulary, built in-process."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(60)]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def tiny_retriever(tmp_path: Path, seed: int = 0, shared_towers: bool = True, pooling: str = "mean",
                   hidden: int = 32, dropout: float = 0.1) -> RetrieverModel:
    torch.manual_seed(seed)
    tok = tiny_tokenizer(tmp_path)
    enc_cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64,
                         hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    encoder = BertModel(enc_cfg)
    cfg = RetrieverConfig(encoder_config=enc_cfg.to_dict(), pooling=pooling, normalize=True, shared_towers=shared_towers,
                          query_max_length=16, target_max_length=32, base_model_name_or_path="tiny-bert")
    model = RetrieverModel(cfg, encoder=encoder)
    model.tokenizer = tok
    return model


def tiny_data(num_docs: int = 120, num_queries: int = 48, seed: int = 0) -> tuple[RetrievalData, RetrievalData]:
    """Synthetic topical data: each doc draws words from one topic; queries share words with their positive."""
    rng = random.Random(seed)
    topics = [WORDS[i::6] for i in range(6)]
    docs, queries = [], []
    for i in range(num_docs):
        topic = topics[i % 6]
        words = [rng.choice(topic) for _ in range(10)] + [f"w{rng.randrange(60)}" for _ in range(4)]
        docs.append({"doc_id": f"d{i}", "text": " ".join(words)})
    for j in range(num_queries):
        target = docs[(j * 7) % num_docs]
        words = rng.sample(target["text"].split(), 4)
        queries.append({"query_id": f"q{j}", "query": " ".join(words), "positive_ids": [target["doc_id"]]})
    train = RetrievalData.from_records(queries[: num_queries * 3 // 4], docs, name="tiny-train")
    test = RetrievalData.from_records(queries[num_queries * 3 // 4 :], docs, name="tiny-test")
    return train, test


#: arguments shared by the small trainer runs of the method tests (6 steps, batch 8, no saving, no reporting)
TINY_TRAINING_DEFAULTS = {"max_steps": 6, "per_device_train_batch_size": 8, "report_to": [], "use_cpu": True,
                          "disable_tqdm": True, "logging_steps": 3, "save_strategy": "no", "seed": 0,
                          "learning_rate": 1e-3}


def tiny_trainer(tmp_path: Path, out: str = "out", **kwargs):
    """A :class:`CorrectorTrainer` on :func:`tiny_data` and :func:`tiny_retriever`; ``kwargs`` override the
    :data:`TINY_TRAINING_DEFAULTS` and set any other :class:`CorrectorTrainingArguments` field."""
    from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments

    train, _ = tiny_data()
    args = CorrectorTrainingArguments(str(tmp_path / out), **{**TINY_TRAINING_DEFAULTS, **kwargs})
    return CorrectorTrainer(model=tiny_retriever(tmp_path), args=args, train_dataset=train)
