"""The dual encoder: a query tower f and a target tower g over any ``AutoModel`` backbone.

Shared towers by default (one encoder module used for both sides, so there is nothing to alias and safetensors
saves cleanly); separate towers hold a second, independent encoder. Pooling ``mean | cls | last``, optional L2
normalisation and a softmax temperature live in :class:`RetrieverConfig`.

Example:
    >>> from hf_corrector import RetrieverModel
    >>> retriever = RetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    >>> q = retriever.encode_queries(["what is a stale embedding?"])  # doctest: +SKIP
    >>> d = retriever.encode_targets(["A cached vector written by an older encoder."])  # doctest: +SKIP
    >>> (q @ d.T).item()  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from ..errors import ConfigError
from .hub_files import (HUB_KWARGS, check_folder_links, check_layer_count, check_local_folder, model_file,
                        read_sentence_transformers_settings)
from .overrides import (apply_overrides, check_encoding_overrides, check_position_limit, check_temperature,
                        honour_sentence_transformers_settings, load_foreign_folder, pop_overrides, saved_model_type)
from .pooling import check_pooling, pool

logger = logging.getLogger(__name__)

Side = Literal["query", "target"]


class RetrieverConfig(PreTrainedConfig):
    """Configuration of a :class:`RetrieverModel`.

    Args:
        encoder_config: the backbone's config as a dict (``AutoConfig.for_model(**encoder_config)`` rebuilds it).
        pooling: ``mean``, ``cls`` or ``last``.
        normalize: L2-normalise embeddings.
        softmax_temperature: temperature of the training softmax (scores are divided by it; 0.05 = ST's scale 20).
            (Not called ``temperature``: transformers reserves that name for generation settings.)
        shared_towers: one encoder for queries and targets (default) or two separate ones.
        query_max_length / target_max_length: tokenizer truncation lengths.
        query_prefix / target_prefix: strings prepended before tokenising (e.g. ``"query: "`` for E5 models).
        base_model_name_or_path: where the backbone came from (provenance, model cards, cache checks).
    """

    model_type = "hfc_retriever"

    def __init__(
        self,
        encoder_config: dict | None = None,
        pooling: str = "mean",
        normalize: bool = True,
        softmax_temperature: float = 0.05,
        shared_towers: bool = True,
        query_max_length: int = 64,
        target_max_length: int = 256,
        query_prefix: str = "",
        target_prefix: str = "",
        base_model_name_or_path: str | None = None,
        **kwargs,
    ):
        check_pooling(pooling)
        check_temperature(softmax_temperature)
        if isinstance(encoder_config, PreTrainedConfig):
            encoder_config = encoder_config.to_dict()
        self.encoder_config = encoder_config or {}
        self.pooling = pooling
        self.normalize = bool(normalize)
        self.softmax_temperature = float(softmax_temperature)
        self.shared_towers = bool(shared_towers)
        self.query_max_length = int(query_max_length)
        self.target_max_length = int(target_max_length)
        self.query_prefix = query_prefix
        self.target_prefix = target_prefix
        self.base_model_name_or_path = base_model_name_or_path
        super().__init__(**kwargs)

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder_config.get("hidden_size", self.encoder_config.get("d_model", 0)))

    def backbone_config(self) -> PreTrainedConfig:
        """The backbone's config object."""
        cfg = dict(self.encoder_config)
        model_type = cfg.pop("model_type", None)
        if model_type is None:
            raise ConfigError("encoder_config has no model_type")
        return AutoConfig.for_model(model_type, **cfg)


@dataclass
class RetrieverOutput(ModelOutput):
    """Output of :meth:`RetrieverModel.forward`: pooled (and maybe normalised) embeddings of each side."""

    query_embeddings: torch.Tensor | None = None
    target_embeddings: torch.Tensor | None = None


class RetrieverModel(PreTrainedModel):
    """Dual encoder f (queries) / g (targets) as a :class:`~transformers.PreTrainedModel`."""

    config_class = RetrieverConfig
    base_model_prefix = "retriever"
    main_input_name = "query_input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules: list[str] = []

    def __init__(self, config: RetrieverConfig, encoder: nn.Module | None = None, query_encoder: nn.Module | None = None):
        super().__init__(config)
        if encoder is None:
            encoder = AutoModel.from_config(config.backbone_config())
        self.encoder = encoder
        if config.shared_towers:
            self.query_encoder = None
        else:
            self.query_encoder = query_encoder if query_encoder is not None else copy.deepcopy(encoder)
        self.tokenizer = None
        self.post_init()
        self._freeze_unused_heads()

    def _freeze_unused_heads(self) -> None:
        """Backbone poolers (BERT's ``pooler``) are never used by our pooling; without gradients they would make
        DDP with ``find_unused_parameters=False`` fail, so they are frozen (their weights are kept and saved)."""
        for tower in (self.encoder, self.query_encoder):
            head = getattr(tower, "pooler", None) if tower is not None else None
            if isinstance(head, nn.Module):
                head.requires_grad_(False)

    def _init_weights(self, module: nn.Module) -> None:  # the backbones initialise themselves
        return

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | os.PathLike,
        pooling: str | None = None,
        normalize: bool | None = None,
        softmax_temperature: float = 0.05,
        shared_towers: bool | None = None,
        query_max_length: int | None = None,
        target_max_length: int | None = None,
        **model_kwargs,
    ) -> RetrieverModel:
        """Wrap a pretrained ``AutoModel`` backbone (a Hub id or local folder) as a dual encoder.

        A sentence-transformers model (``modules.json``, from a folder or the Hub alike) gives its pooling,
        normalisation, max length and ``query`` / ``document`` prompts unless overridden, so the retriever encodes
        like ``SentenceTransformer.encode_query`` / ``encode_document``. Extra keyword arguments go to
        ``AutoModel.from_pretrained`` (e.g. ``num_hidden_layers=2``, ``revision``, ``local_files_only``). A path
        that looks local and does not exist raises ``FileNotFoundError("no such folder: ...")`` at once. A
        sentence-transformers ``Router`` with one ``Transformer`` per route gives separate towers
        (``shared_towers`` defaults to True otherwise).

        Example:
            >>> retriever = RetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
            >>> retriever.config.pooling, retriever.config.normalize  # doctest: +SKIP
            ('mean', True)
        """
        name_or_path = check_local_folder(name_or_path)
        hub_kwargs = {k: model_kwargs[k] for k in HUB_KWARGS if k in model_kwargs}
        lengths = {k: v for k, v in (("query_max_length", query_max_length),
                                     ("target_max_length", target_max_length)) if v is not None}
        check_encoding_overrides({**lengths, "softmax_temperature": softmax_temperature,
                                  **{k: v for k, v in (("pooling", pooling), ("normalize", normalize)) if v is not None}})
        st = read_sentence_transformers_settings(name_or_path, **hub_kwargs)
        if normalize is None and st.get("normalize_for_cosine"):
            logger.warning("%s: its similarity_fn_name is 'cosine' with no Normalize module: loading it with "
                           "normalize=True (cosine = dot product of normalised vectors; pass normalize=False for "
                           "unnormalised embeddings)", name_or_path)
        routes = st.get("query_transformer_path"), st.get("document_transformer_path")
        if routes[0]:
            if shared_towers:
                raise ConfigError(f"{name_or_path} has separate query and document towers (a sentence-transformers "
                                  "Router); shared_towers=True would drop the query tower: leave it out or pass False")
            shared_towers = False
        transformer_path = routes[1] or st.get("transformer_path")
        parent = hub_kwargs.get("subfolder") or ""
        if transformer_path:
            hub_kwargs["subfolder"] = model_kwargs["subfolder"] = "/".join(p for p in (parent, transformer_path) if p)
        if "num_hidden_layers" in model_kwargs:
            check_layer_count(name_or_path, model_kwargs["num_hidden_layers"], hub_kwargs)
        check_folder_links(name_or_path, hub_kwargs.get("subfolder"))
        pooling = pooling or st.get("pooling", "mean")
        normalize = st.get("normalize", False) if normalize is None else normalize
        encoder = AutoModel.from_pretrained(name_or_path, **model_kwargs)
        check_position_limit(encoder.config, lengths, name_or_path)
        tokenizer = None
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs)
        except (OSError, ValueError) as err:
            logger.warning("no tokenizer found at %s (%s); set retriever.tokenizer before encoding", name_or_path, err)
        max_len = st.get("max_seq_length", 256)
        if st and "max_seq_length" not in st and tokenizer is not None and tokenizer.model_max_length < 100_000:
            max_len = int(tokenizer.model_max_length)  # sentence-transformers >= 5 keeps it in the tokenizer config
        config = RetrieverConfig(
            encoder_config=encoder.config.to_dict(),
            pooling=pooling,
            normalize=normalize,
            softmax_temperature=softmax_temperature,
            shared_towers=shared_towers is not False,
            query_max_length=query_max_length or st.get("query_length") or min(64, max_len),
            target_max_length=target_max_length or st.get("document_length") or max_len,
            query_prefix=st.get("query_prefix", ""),
            target_prefix=st.get("target_prefix", ""),
            base_model_name_or_path=str(name_or_path),
        )
        query_encoder = None
        if routes[0]:
            query_folder = "/".join(p for p in (parent, routes[0]) if p)
            check_folder_links(name_or_path, query_folder)
            query_encoder = AutoModel.from_pretrained(name_or_path, **{**model_kwargs, "subfolder": query_folder})
        model = cls(config, encoder=encoder, query_encoder=query_encoder)
        model.tokenizer = tokenizer
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a saved retriever (and its tokenizer, when saved alongside).

        ``pooling``, ``normalize``, ``query_max_length``, ``target_max_length`` and ``softmax_temperature`` are
        applied to the saved config (logged), ``shared_towers`` other than the saved layout and ``num_hidden_layers``
        are refused, as by :func:`~hf_corrector.load_retriever` (:mod:`hf_corrector.models.overrides`). Settings
        that sentence-transformers saved over the folder (max lengths, prompts) are honoured, with a warning. A
        path that looks local and does not exist raises ``FileNotFoundError("no such folder: ...")`` at once.

        Example:
            >>> RetrieverModel.from_pretrained("out/final", normalize=False)  # doctest: +SKIP
        """
        path = pretrained_model_name_or_path
        overrides, shared = pop_overrides(kwargs, path)
        hub = {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}
        if isinstance(path, (str, os.PathLike)):
            path = check_local_folder(path, "retriever")
            check_folder_links(path, hub.get("subfolder"))
            saved_type = saved_model_type(path, hub)
            if saved_type is None and model_file(path, "modules.json", **hub) is not None:
                saved_type = "absent"  # no root config.json: a Router layout saved by sentence-transformers alone
            if saved_type not in (None, cls.config_class.model_type):
                return load_foreign_folder(cls, path, saved_type, hub, overrides, shared)
        model = super().from_pretrained(path, *args, **kwargs)
        model._freeze_unused_heads()  # from_pretrained resets requires_grad: an unfrozen pooler breaks DDP
        if isinstance(path, (str, os.PathLike)) and Path(path).is_dir():
            from .sentence_transformers_export import newer_modules_or

            model = newer_modules_or(model, path)  # sentence-transformers saved over it?
            model = honour_sentence_transformers_settings(model, path, hub)
        try:
            model.tokenizer = AutoTokenizer.from_pretrained(path, **hub)
        except (OSError, ValueError):
            logger.info("no tokenizer saved with %s", path)
        return apply_overrides(model, path, overrides, shared)

    def push_to_hub(self, repo_id: str, **kwargs) -> Any:
        """Publish the retriever in one commit, with the sentence-transformers card (transformers' own would say
        ``library_name: transformers``); arguments as transformers' ``push_to_hub``. See
        :mod:`hf_corrector.hub.retriever_push`.

        Example:
            >>> retriever.push_to_hub("me/my-retriever")  # doctest: +SKIP
        """
        from ..hub.retriever_push import push_retriever  # the card lives a layer up (tests/test_layering.py)

        return push_retriever(self, repo_id, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args, sentence_transformers: bool = True,
                        **kwargs) -> None:
        """Save weights (safetensors), config, the tokenizer and the sentence-transformers modules.

        With a tokenizer and ``sentence_transformers=True`` (default) the folder is also a sentence-transformers
        model: ``SentenceTransformer(folder)`` encodes like :meth:`encode_queries` / :meth:`encode_targets`, without
        hf-corrector (see :mod:`hf_corrector.models.sentence_transformers_export`; it costs a second copy of the encoder
        weights, in ``0_Transformer/``). ``push_to_hub=True`` pushes the whole folder, extra files included.

        Example:
            >>> retriever.save_pretrained("out/final")  # doctest: +SKIP
            >>> SentenceTransformer("out/final").encode_query(["a query"])  # doctest: +SKIP
        """
        push = kwargs.pop("push_to_hub", False)
        hub_kwargs = {k: kwargs.pop(k) for k in ("repo_id", "commit_message", "commit_description", "private", "token",
                                                 "revision", "create_pr") if k in kwargs}
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(save_directory)
            if sentence_transformers:
                from .sentence_transformers_export import write_sentence_transformers_files

                write_sentence_transformers_files(self, save_directory,
                                                  safe_serialization=kwargs.get("safe_serialization", True))
        elif sentence_transformers:
            logger.info("no tokenizer: %s is not written as a sentence-transformers model", save_directory)
        if push:  # after every file is written (PreTrainedModel would push before the tokenizer and modules)
            repo_id = hub_kwargs.pop("repo_id", Path(save_directory).name)
            self.push_to_hub(repo_id, **hub_kwargs)

    # -- encoding ----------------------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    def tower(self, side: Side) -> nn.Module:
        """The encoder module used for ``side``."""
        return self.query_encoder if (side == "query" and self.query_encoder is not None) else self.encoder

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, side: Side = "target", **extra) -> torch.Tensor:
        """Pooled (and, if configured, L2-normalised) embeddings of tokenised texts."""
        out = self.tower(side)(input_ids=input_ids, attention_mask=attention_mask, **extra)
        emb = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        return F.normalize(emb, dim=-1) if self.config.normalize else emb

    def forward(
        self,
        query_input_ids: torch.Tensor | None = None,
        query_attention_mask: torch.Tensor | None = None,
        target_input_ids: torch.Tensor | None = None,
        target_attention_mask: torch.Tensor | None = None,
    ) -> RetrieverOutput:
        q = t = None
        if query_input_ids is not None:
            q = self.embed(query_input_ids, query_attention_mask, "query")
        if target_input_ids is not None:
            t = self.embed(target_input_ids, target_attention_mask, "target")
        return RetrieverOutput(query_embeddings=q, target_embeddings=t)

    def tokenize(self, texts: Sequence[str], side: Side, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise texts for ``side`` with the configured prefix and truncation length."""
        if self.tokenizer is None:
            raise ConfigError("this retriever has no tokenizer; set `retriever.tokenizer = AutoTokenizer...`")
        prefix = self.config.query_prefix if side == "query" else self.config.target_prefix
        length = max_length or (self.config.query_max_length if side == "query" else self.config.target_max_length)
        batch = self.tokenizer(
            [prefix + t for t in texts], padding=True, truncation=True, max_length=length, return_tensors="pt"
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        side: Side = "target",
        batch_size: int = 64,
        max_length: int | None = None,
        show_progress_bar: bool | None = None,
        device: str | torch.device | None = None,
        desc: str | None = None,
        prefix: str | None = None,
    ) -> torch.Tensor:
        """Encode texts in batches without gradients; returns a float32 CPU tensor of shape (len(texts), d).
        ``desc`` names the phase on the progress bar (e.g. "building the cache"); ``prefix`` replaces the config's
        ``query_prefix`` / ``target_prefix`` (as a training collator of your own set it).

        All texts are tokenised once up front and batched by token length (longest first), so a batch pads to
        almost nothing; the output is in input order. Runs under ``torch.inference_mode`` (no autograd
        bookkeeping); the result is an ordinary tensor.
        """
        device = torch.device(device) if device is not None else self.device
        was_training = self.training
        self.eval()
        parts: list[torch.Tensor] = []
        order: list[int] = []
        show = len(texts) > 4 * batch_size if show_progress_bar is None else show_progress_bar
        try:
            desc = desc or ("encoding queries" if side == "query" else "encoding targets")
            if self.tokenizer is None:
                raise ConfigError("this retriever has no tokenizer; set `retriever.tokenizer = AutoTokenizer...`")
            if prefix is None:
                prefix = self.config.query_prefix if side == "query" else self.config.target_prefix
            length = max_length or (self.config.query_max_length if side == "query" else self.config.target_max_length)
            ids = self.tokenizer([prefix + t for t in texts], truncation=True, max_length=length)["input_ids"] if texts else []
            order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
            left = getattr(self.tokenizer, "padding_side", "right") == "left"
            for start in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not show):
                idx = order[start : start + batch_size]
                width = len(ids[idx[0]])
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):  # on the tokenizer's padding side, as its own padding=True
                    cols = slice(width - len(ids[i]), width) if left else slice(0, len(ids[i]))
                    input_ids[row, cols] = torch.as_tensor(ids[i], dtype=torch.long)
                    mask[row, cols] = 1
                parts.append(self.embed(input_ids.to(device), mask.to(device), side))
        finally:
            self.train(was_training)
        with torch.inference_mode(False):  # an ordinary tensor: callers may write it back or use it under autograd
            out = torch.empty(len(texts), self.embedding_dim, dtype=torch.float32)
            if parts:
                out[torch.as_tensor(order)] = torch.cat(parts).float().cpu()
        return out

    def encode_queries(self, texts: Sequence[str], **kwargs) -> torch.Tensor:
        """Encode queries with f. See :meth:`encode`."""
        return self.encode(texts, side="query", **kwargs)

    def encode_targets(self, texts: Sequence[str], **kwargs) -> torch.Tensor:
        """Encode targets (passages, documents) with g. See :meth:`encode`."""
        return self.encode(texts, side="target", **kwargs)

    def provenance(self) -> dict:
        """What a cache built by this retriever records about its encoder."""
        return {
            "encoder": self.config.base_model_name_or_path or self.config.name_or_path or "unknown",
            "embedding_dim": self.embedding_dim,
            "pooling": self.config.pooling,
            "normalize": self.config.normalize,
            "target_max_length": self.config.target_max_length,
        }
