"""Shared helpers of the benchmark scripts: peak-RSS sampling, atomic JSON, tiny local model and BEIR folder."""

from __future__ import annotations

import json
import os
import random
import resource
import threading
import time
from pathlib import Path

import psutil

WORDS = ("cell protein gene cancer virus drug trial brain blood heart lung liver immune dose risk mouse human "
         "growth signal receptor enzyme tumor therapy vaccine infection mutation pathway plasma insulin kidney").split()


class PeakRSS:
    """Samples this process's RSS in a background thread; ``peak_mb`` is the peak seen while active."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.proc = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        self.start_mb = self.proc.memory_info().rss / 2**20
        self.peak = self.proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        return False

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def maxrss_mb() -> float:
    """Process-lifetime peak RSS (getrusage; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        return False


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [f"w{i}" for i in range(60)]
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


def write_tiny_model(path: str | os.PathLike, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random BERT (plain HF folder + tokenizer) that both RetrieverModel.from_backbone and SentenceTransformer load."""
    import torch
    from transformers import BertConfig, BertModel

    path = Path(path)
    torch.manual_seed(seed)
    tok = tiny_tokenizer()
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_tiny_beir(path: str | os.PathLike, num_docs: int = 80, num_queries: int = 40, seed: int = 0) -> Path:
    """Synthetic topical BEIR folder (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv)."""
    rng = random.Random(seed)
    path = Path(path)
    (path / "qrels").mkdir(parents=True, exist_ok=True)
    topics = [WORDS[i::6] for i in range(6)]
    docs = []
    with open(path / "corpus.jsonl", "w") as fh:
        for i in range(num_docs):
            words = [rng.choice(topics[i % 6]) for _ in range(10)] + [f"w{rng.randrange(60)}" for _ in range(4)]
            docs.append(" ".join(words))
            fh.write(json.dumps({"_id": f"d{i}", "title": "", "text": docs[-1]}) + "\n")
    split_at = num_queries * 3 // 4
    with open(path / "queries.jsonl", "w") as fq, open(path / "qrels" / "train.tsv", "w") as ftr, \
            open(path / "qrels" / "test.tsv", "w") as fte:
        ftr.write("query-id\tcorpus-id\tscore\n")
        fte.write("query-id\tcorpus-id\tscore\n")
        for j in range(num_queries):
            d = (j * 7) % num_docs
            fq.write(json.dumps({"_id": f"q{j}", "text": " ".join(rng.sample(docs[d].split(), 4))}) + "\n")
            (ftr if j < split_at else fte).write(f"q{j}\td{d}\t1\n")
    return path
