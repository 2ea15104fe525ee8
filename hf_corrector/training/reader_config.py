"""Cross-field checks of the reader-supervised arguments (``reader_*``; see :mod:`hf_corrector.training.reader_step`).

Example:
    >>> CorrectorTrainingArguments("out", reader_loss="pdist")  # doctest: +SKIP
    ConfigError: reader_loss='pdist' needs a reader: set reader_model (a path, a Hub id or 'smollm2') ...
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from ..models.reader import check_prompt_template


def eval_top_k(args: Any) -> list[int]:
    """``reader_eval_top_k`` as a sorted list of positive ints."""
    try:
        ks = sorted({int(p) for p in str(args.reader_eval_top_k).split(",") if p.strip()})
    except ValueError:
        ks = []
    if not ks or ks[0] < 1:
        raise ConfigError(f"reader_eval_top_k takes comma-separated positive integers, got {args.reader_eval_top_k!r}")
    return ks


def check_reader_arguments(args: Any) -> None:
    """Raise :class:`ConfigError` naming what to change when the reader arguments cannot do what they say."""
    # reader_loss's value is checked against its metadata["choices"] (READER_LOSSES) in the arguments' __post_init__
    if args.reader_loss == "none":
        set_ = [n for n in ("reader_model", "reader_gguf_file") if getattr(args, n) is not None]
        if set_:
            raise ConfigError(f"{', '.join(set_)} set but reader_loss='none' (supervised training, no reader): set "
                              f"reader_loss to 'pdist', 'emdr2' or 'replug', or drop {set_[0]}")
        return
    check_prompt_template(args.reader_prompt_template)
    eval_top_k(args)
    problems = []
    if args.num_negatives < 2:
        problems.append(f"num_negatives={args.num_negatives} is the number of candidates per question the reader "
                        "scores: it needs at least 2")
    for on, name in [(args.tele_negatives, "tele_negatives=True"),
                     (args.false_negative_margin is not None, "false_negative_margin"),
                     (args.hard_negatives in ("dataset", "dataset+cache"), f"hard_negatives={args.hard_negatives!r}")]:
        if on:
            problems.append(f"{name} needs labelled positives / given negatives, which reader-supervised data does "
                            "not have: drop it")
    if problems:
        raise ConfigError(f"invalid reader setting (reader_loss={args.reader_loss!r}): " + "; ".join(problems))
