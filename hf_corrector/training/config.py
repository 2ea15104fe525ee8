"""Training arguments of :class:`~hf_corrector.CorrectorTrainer`.

Every strategy of the corrector paper and its baselines is reachable from these arguments alone:

================================  ==============================================================================
strategy                          arguments
================================  ==============================================================================
in-batch negatives only           ``num_negatives=0``
stale cache, no correction        ``correction="none"`` (``cache_refresh_steps=0``)
full re-embedding every R steps   ``correction="none", cache_refresh_steps=R`` (ANCE-style)
corrector, no refresh (headline)  ``correction="mlp"`` (the default)
corrector plus refresh            ``correction="mlp", cache_refresh_steps=R``
Nyström low-rank correction       ``correction="nystrom"`` (+ ``nystrom_*``)
================================  ==============================================================================

Defaults overridden from :class:`transformers.TrainingArguments`, and why:

* ``remove_unused_columns=False``: the collator needs the query and positive-id columns, which the model's
  ``forward`` does not name.
* ``ddp_find_unused_parameters=False``: every encoder and corrector parameter receives a gradient each step.
* ``ddp_broadcast_buffers=False``: the encoders' buffers (position ids) never change.
* ``learning_rate=2e-5``: the usual fine-tuning rate for sentence encoders (Trainer's 5e-5 over-drives them).
* ``warmup_steps=0`` and ``logging_steps=10``: short retrieval runs; log often enough to see staleness move.

Example:
    >>> args = CorrectorTrainingArguments("out", num_negatives=7, negative_sampling="gumbel")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..errors import ConfigError
from .validation import validate_arguments

NEGATIVE_SAMPLING = ("topk", "gumbel")
CORRECTIONS = ("mlp", "linear", "none", "nystrom")
CORRECTOR_LOSSES = ("ce", "mse", "ce+mse")
EVAL_CORPUS = ("fresh", "stale", "corrected")
CANDIDATE_INDEXES = ("none", "flat", "ivf", "hnsw")
NYSTROM_LANDMARKS = ("uniform", "recent")


@dataclass
class CorrectorTrainingArguments(TrainingArguments):
    """:class:`~transformers.TrainingArguments` plus the corrector method's knobs (see the module docstring)."""

    __repr__ = TrainingArguments.__str__  # keep TrainingArguments' redaction of hub_token (dataclass would regenerate)

    # -- overridden defaults ---------------------------------------------------------------------------------------
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Overridden to False: the collator needs columns that forward() does not name."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Overridden to False: every parameter gets a gradient each step."}
    )
    ddp_broadcast_buffers: bool | None = field(
        default=False, metadata={"help": "Overridden to False: encoder buffers are constant."}
    )
    learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate of the query and target encoders."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N steps (task loss, corrector loss, staleness)."})

    # -- negatives ------------------------------------------------------------------------------------------------------
    num_negatives: int = field(
        default=7, metadata={"help": "Hard negatives chosen per query from the (corrected) cache; 0 = in-batch only."}
    )
    negative_sampling: str = field(
        default="topk",
        metadata={"help": "How to choose negatives from the scores: 'topk' (exact top-k) or 'gumbel' (Gumbel-top-k "
                          "sampling without replacement from softmax(beta * score))."},
    )
    sampling_temperature: float = field(
        default=0.05, metadata={"help": "Temperature 1/beta of the Gumbel sampling softmax (only for 'gumbel')."}
    )
    in_batch_negatives: bool = field(
        default=True, metadata={"help": "Also use the other queries' positives and negatives in the softmax."}
    )
    temperature: float = field(
        default=0.05, metadata={"help": "Softmax temperature of the task and corrector losses (0.05 = ST scale 20)."}
    )
    query_max_length: int | None = field(
        default=None, metadata={"help": "Truncate queries to this many tokens (default: the retriever's setting)."}
    )
    target_max_length: int | None = field(
        default=None, metadata={"help": "Truncate targets to this many tokens (default: the retriever's setting)."}
    )

    # -- correction -------------------------------------------------------------------------------------------------------
    correction: str = field(
        default="mlp",
        metadata={"help": "How stale cache embeddings are corrected before scoring: 'mlp' (residual MLP corrector), "
                          "'linear' (linear corrector), 'nystrom' (non-parametric low-rank map, AISTATS 2023) or "
                          "'none' (plain stale cache)."},
    )
    corrector_loss: str = field(
        default="ce+mse",
        metadata={"help": "Corrector objective: 'ce' (match the fresh truncated softmax), 'mse' (match fresh "
                          "embeddings) or 'ce+mse'. Keep mse in if corrected embeddings are used for serving."},
    )
    corrector_mse_weight: float = field(default=1.0, metadata={"help": "Weight of the MSE term in 'ce+mse'."})
    corrector_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of the corrector."})
    corrector_warmup_steps: int = field(
        default=0, metadata={"help": "First N steps train only the corrector (the encoders' learning rate is 0)."}
    )
    corrector_hidden_dim: int | None = field(
        default=None, metadata={"help": "Hidden width of an MLP corrector built from arguments (default 2 x dim)."}
    )
    corrector_num_layers: int = field(default=2, metadata={"help": "Linear layers of an MLP corrector built from arguments."})
    corrector_chunk_size: int = field(
        default=65536, metadata={"help": "Cache rows corrected and scored at once (bounds memory of the full pass)."}
    )
    corrector_fallback_patience: int = field(
        default=0,
        metadata={"help": "If > 0: after this many logging steps in a row where cos(h(g'), g) < cos(g', g), warn and "
                          "score with uncorrected embeddings until the corrector recovers. 0 = warn only."},
    )

    # -- cache maintenance ------------------------------------------------------------------------------------------------
    cache_refresh_steps: int = field(
        default=0, metadata={"help": "Re-embed the whole corpus every R optimizer steps (ANCE-style); 0 = never."}
    )
    cache_write_back: bool = field(
        default=False,
        metadata={"help": "Write each step's fresh target embeddings back into the cache (the training-mode "
                          "encodings of the step, dropout included: no extra forward pass)."},
    )
    cache_encode_batch_size: int = field(default=64, metadata={"help": "Batch size for corpus (re-)encoding."})
    cache_dtype: str = field(default="float32", metadata={"help": "Cache storage dtype: float32, float16 or bfloat16."})

    # -- Nyström correction -----------------------------------------------------------------------------------------------
    nystrom_landmarks: int = field(default=512, metadata={"help": "Landmark targets re-encoded at each Nyström refit."})
    nystrom_landmark_selection: str = field(
        default="uniform", metadata={"help": "'uniform' over the corpus or 'recent' (recently selected targets)."}
    )
    nystrom_ridge: float = field(default=1e-3, metadata={"help": "Ridge regularisation of the Nyström least squares."})
    nystrom_rank: int | None = field(default=None, metadata={"help": "Rank r of a low-rank Nyström map (None = full)."})
    nystrom_refit_steps: int = field(default=20, metadata={"help": "Refit the Nyström map every M steps."})
    nystrom_residual: bool = field(
        default=False,
        metadata={"help": "Fit the Nyström map to the change, W = I + fit(S, G - S): directions no landmark spans stay "
                          "as they are instead of being mapped to 0 (advisable when nystrom_landmarks < dim)."},
    )

    # -- ANCE-Tele --------------------------------------------------------------------------------------------------------
    tele_negatives: bool = field(
        default=False,
        metadata={"help": "ANCE-Tele: draw negatives from per-query pools (ANN + lookahead + momentum) built at each "
                          "refresh (or every tele_pool_steps with a corrector) instead of scoring the cache each step."},
    )
    tele_pool_size: int = field(default=200, metadata={"help": "Size of each ANCE-Tele pool (ANN, lookahead)."})
    tele_momentum_weight: float = field(default=0.5, metadata={"help": "Share of negatives from the momentum pool."})
    tele_lookahead_weight: float = field(default=0.5, metadata={"help": "Weight of lookahead vs ANN in the new pool."})
    tele_use_ann: bool = field(default=True, metadata={"help": "Include ANN negatives (ablation switch)."})
    tele_use_lookahead: bool = field(default=True, metadata={"help": "Include lookahead negatives (ablation switch)."})
    tele_use_momentum: bool = field(default=True, metadata={"help": "Include momentum negatives (ablation switch)."})
    tele_pool_steps: int = field(
        default=0, metadata={"help": "Rebuild pools every N steps from (corrected) cache between refreshes; 0 = at refreshes only."}
    )

    # -- two-stage candidate selection ------------------------------------------------------------------------------------
    candidate_index: str = field(
        default="none",
        metadata={"help": "Two-stage selection: a faiss index over the stale cache ('flat', 'ivf', 'hnsw') returns "
                          "candidate_pool_size candidates per query, which the corrector re-scores. 'none' = full pass. "
                          "For large caches prefer 'ivf': on a synthetic 1M x 384 cache it kept 0.997-1.0 of the "
                          "exact corrected top-10 in the pool, 'hnsw' (M=32, faiss' default construction beam) only "
                          "0.76-0.94 (BENCHMARKS.md, section 2b)."},
    )
    candidate_pool_size: int = field(default=1024, metadata={"help": "Candidates per query from the faiss index."})
    candidate_nprobe: int = field(default=16, metadata={"help": "IVF lists searched per query (candidate_index='ivf')."})

    # -- evaluation and safety ----------------------------------------------------------------------------------------------
    eval_corpus_embeddings: str = field(
        default="fresh",
        metadata={"help": "Comma-separated corpus representations for evaluate(): 'fresh' (re-encode the corpus), "
                          "'stale' (the cache) and/or 'corrected' (h applied to the cache)."},
    )
    eval_batch_size_encode: int = field(default=64, metadata={"help": "Batch size for encoding in evaluate()."})
    nonfinite_action: str = field(
        default="raise", metadata={"help": "On NaN/inf in a loss, embedding or corrector output: 'raise' or 'skip' the step."}
    )

    def __post_init__(self):
        validate_arguments(self)  # first: transformers' __post_init__ raises TypeError on e.g. logging_steps="10"
        super().__post_init__()
        if self.num_negatives < 0:
            raise ConfigError(f"num_negatives must be >= 0, got {self.num_negatives}")
        if self.negative_sampling not in NEGATIVE_SAMPLING:
            raise ConfigError(f"negative_sampling must be one of {NEGATIVE_SAMPLING}, got {self.negative_sampling!r}")
        if self.correction not in CORRECTIONS:
            raise ConfigError(f"correction must be one of {CORRECTIONS}, got {self.correction!r}")
        if self.corrector_loss not in CORRECTOR_LOSSES:
            raise ConfigError(f"corrector_loss must be one of {CORRECTOR_LOSSES}, got {self.corrector_loss!r}")
        for name in ("temperature", "sampling_temperature", "corrector_learning_rate"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("cache_refresh_steps", "corrector_warmup_steps", "corrector_fallback_patience", "tele_pool_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.cache_dtype not in ("float32", "float16", "bfloat16"):
            raise ConfigError(f"cache_dtype must be float32, float16 or bfloat16, got {self.cache_dtype!r}")
        parts = [p.strip() for p in self.eval_corpus_embeddings.split(",") if p.strip()]
        bad = [p for p in parts if p not in EVAL_CORPUS]
        if bad or not parts:
            raise ConfigError(f"eval_corpus_embeddings takes a comma-separated subset of {EVAL_CORPUS}, got {bad or parts}")
        if self.candidate_index not in CANDIDATE_INDEXES:
            raise ConfigError(f"candidate_index must be one of {CANDIDATE_INDEXES}, got {self.candidate_index!r}")
        if self.candidate_index != "none" and self.candidate_pool_size < max(self.num_negatives, 1):
            raise ConfigError("candidate_pool_size must be at least num_negatives")
        if self.candidate_nprobe < 1:
            raise ConfigError(f"candidate_nprobe must be >= 1, got {self.candidate_nprobe}")
        if self.nystrom_landmark_selection not in NYSTROM_LANDMARKS:
            raise ConfigError(f"nystrom_landmark_selection must be one of {NYSTROM_LANDMARKS}")
        if self.correction == "nystrom" and (self.nystrom_landmarks < 1 or self.nystrom_refit_steps < 1):
            raise ConfigError("nystrom_landmarks and nystrom_refit_steps must be >= 1")
        if not 0.0 <= self.tele_momentum_weight <= 1.0 or not 0.0 <= self.tele_lookahead_weight <= 1.0:
            raise ConfigError("tele_momentum_weight and tele_lookahead_weight must be in [0, 1]")
        if self.tele_negatives and not (self.tele_use_ann or self.tele_use_lookahead or self.tele_use_momentum):
            raise ConfigError("tele_negatives needs at least one of tele_use_ann / tele_use_lookahead / tele_use_momentum")
        if self.nonfinite_action not in ("raise", "skip"):
            raise ConfigError(f"nonfinite_action must be 'raise' or 'skip', got {self.nonfinite_action!r}")

    @property
    def eval_corpus_list(self) -> list[str]:
        return [p.strip() for p in self.eval_corpus_embeddings.split(",") if p.strip()]

    @property
    def uses_corrector(self) -> bool:
        return self.correction in ("mlp", "linear")

    @property
    def mines_negatives(self) -> bool:
        """Whether negatives come from the cache (scored rows or ANCE-Tele pools), not from the batch alone."""
        return self.num_negatives > 0 or self.tele_negatives
