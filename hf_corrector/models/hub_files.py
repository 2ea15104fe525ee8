"""Where a model's files come from: a local folder or the Hub, read the same way.

* :func:`looks_local` / :func:`check_local_folder`: a name that is obviously a path (``./out``, ``/data/m``,
  ``~/m``, ``out/run1/final``) and does not exist fails at once with "no such folder", instead of turning into a
  Hub lookup that fails after retries with a confusing repo-id error.
* :func:`model_file`: one file of a model (``modules.json``...) from a folder, or through ``huggingface_hub``
  (``hf_hub_download``, so ``HF_HUB_OFFLINE``, ``HF_HOME`` / ``cache_dir``, ``revision`` and ``token`` work like
  they do for ``from_pretrained``); ``None`` when the model has no such file.
* :func:`read_sentence_transformers_settings`: pooling, normalisation, max length and prompts of a
  sentence-transformers model (old ``pooling_mode_*_token`` flags and the newer single ``pooling_mode`` key).

Example:
    >>> looks_local("./out/final"), looks_local("sentence-transformers/all-MiniLM-L6-v2")
    (True, False)
    >>> read_sentence_transformers_settings("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
    {'pooling': 'mean', 'normalize': True, 'max_seq_length': 256}
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any

from huggingface_hub import hf_hub_download, try_to_load_from_cache
from transformers import AutoConfig
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: keyword arguments of ``from_pretrained`` that also say where to download a single file from
HUB_KWARGS = ("subfolder", "revision", "token", "cache_dir", "local_files_only")

#: sentence-transformers pooling modes -> ours (``pooling_mode`` values and the legacy boolean keys)
_ST_POOLING = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
_ST_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
#: sentence-transformers prompt names that mean "queries" / "targets"
_QUERY_PROMPTS = ("query",)
_TARGET_PROMPTS = ("document", "passage", "corpus", "doc")


def looks_local(name_or_path: str | os.PathLike) -> bool:
    """Whether ``name_or_path`` is meant as a local path rather than a Hub repo id.

    Local: a ``Path`` object; a string that starts with ``.``, ``/``, ``~`` (or a drive letter); one with more than
    one separator (a Hub id is ``name`` or ``org/name``); one with a backslash on Windows; or one whose first part
    exists on disk (``out/final`` while ``out/`` exists).

    Example:
        >>> [looks_local(p) for p in ("bert-base-uncased", "org/name", "~/models/m", "a/b/c", "../m")]
        [False, False, True, True, True]
    """
    if isinstance(name_or_path, os.PathLike):
        return True
    name = str(name_or_path)
    if not name:
        return False
    if name.startswith((".", "/", "~")) or (len(name) > 1 and name[1] == ":"):
        return True
    if os.altsep and os.altsep in name or (os.sep != "/" and os.sep in name):
        return True
    parts = name.split("/")
    if len(parts) > 2:
        return True
    return len(parts) == 2 and os.path.isdir(parts[0])


def check_local_folder(name_or_path: str | os.PathLike, what: str = "model") -> str:
    """Raise ``FileNotFoundError("no such folder: ...")`` when ``name_or_path`` looks local and is not a folder.

    Returns the name to load from: a local path with ``~`` expanded, or the Hub id untouched (Hub errors come
    from ``huggingface_hub``).

    Example:
        >>> check_local_folder("./no/such/model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: no such folder: './no/such/model' (looked for a local model: ...
    """
    if not looks_local(name_or_path):
        return str(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    state = "is a file, not a folder" if path.exists() else "does not exist"
    raise FileNotFoundError(
        f"no such folder: {str(name_or_path)!r} (looked for a local {what}: {path.resolve()} {state}; "
        f"a Hub repo id is 'name' or 'org/name')"
    )


def model_file(name_or_path: str | os.PathLike, filename: str, **hub_kwargs: Any) -> str | None:
    """Path of ``filename`` in a local folder or a Hub repo (downloaded into the HF cache), or ``None`` if absent.

    ``hub_kwargs`` may hold ``subfolder``, ``revision``, ``token``, ``cache_dir`` and ``local_files_only`` (others
    are ignored, so ``from_pretrained`` keyword arguments can be passed as they are). Offline with the file not
    cached, the answer is ``None`` with a warning. A missing repo or revision raises ``huggingface_hub``'s error.

    Example:
        >>> model_file("sentence-transformers/all-MiniLM-L6-v2", "modules.json")  # doctest: +SKIP
        '/home/me/.cache/huggingface/hub/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/.../modules.json'
    """
    kw = {k: hub_kwargs[k] for k in HUB_KWARGS if hub_kwargs.get(k) is not None}
    subfolder = kw.pop("subfolder", "") or ""
    check_inside(str(name_or_path), subfolder, filename)
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        path = local / subfolder / filename
        if path.exists():
            _check_link(local, path)
        return str(path) if path.is_file() else None
    check_local_folder(name_or_path)
    repo_id = str(name_or_path)
    try:
        return hf_hub_download(repo_id, filename, subfolder=subfolder or None, **kw)
    except LocalEntryNotFoundError:  # offline (or unreachable) and not in the cache
        cached = try_to_load_from_cache(repo_id, f"{subfolder}/{filename}" if subfolder else filename,
                                        cache_dir=kw.get("cache_dir"), revision=kw.get("revision"))
        if isinstance(cached, str):
            return cached
        if cached is None:  # unknown, not "known to be absent"
            logger.warning("%s: %s is not in the local Hugging Face cache and the Hub cannot be reached; going on "
                           "without it", repo_id, filename)
        return None
    except EntryNotFoundError:  # the repo has no such file
        return None


def _cache_blobs(folder: Path) -> Path | None:
    """The ``blobs/`` folder of the Hugging Face cache repo that ``folder`` (resolved) is a snapshot of, or is
    inside of (``.../models--org--name/snapshots/<commit>/...``); ``None`` outside such a cache."""
    for snapshot in (folder, *folder.parents):
        repo = snapshot.parent.parent
        if snapshot.parent.name == "snapshots" and repo.name.startswith(("models--", "datasets--", "spaces--")):
            return repo / "blobs"
    return None


def _check_link(local: Path, path: Path) -> None:
    """Refuse a file of the model folder ``local`` that is a link to a file outside it, except a Hugging Face cache
    snapshot's links into its own repo's ``blobs/`` (how ``snapshot_download`` lays a model out)."""
    target, root = path.resolve(), local.resolve()
    if target.is_relative_to(root):
        return
    blobs = _cache_blobs(root)
    if blobs is not None and target.is_relative_to(blobs):
        return
    raise ConfigError(f"{path}: a link to {target}, outside the model folder {local}; a model's files are read only "
                      f"from inside its folder (copy the file in instead of linking it)")


def check_folder_links(name_or_path: str | os.PathLike, subfolder: str | None = None) -> None:
    """For a local model folder: refuse any file directly in it (or in ``subfolder``), the files that
    ``from_pretrained`` reads (config, weights, tokenizer), that links outside the folder (see :func:`model_file`).
    A Hub id is left alone."""
    local = Path(name_or_path).expanduser()
    if not local.is_dir():
        return
    check_inside(str(name_or_path), subfolder or "")
    folder = local / (subfolder or "")
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.is_symlink():
                _check_link(local, entry)


def check_inside(name_or_path: str, subfolder: str, filename: str = "") -> None:
    """Refuse a ``subfolder`` / file name (e.g. a ``path`` in ``modules.json``) that leaves the model's folder:
    absolute, with ``..``, or with a drive."""
    for part in (subfolder, filename):
        pure = PurePosixPath(str(part).replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or (len(str(part)) > 1 and str(part)[1] == ":"):
            raise ConfigError(f"{name_or_path}: {part!r} points outside the model folder (a module path in "
                              f"modules.json, or subfolder=); a model's files are read only from inside its folder")


def _read_json(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _router_towers(router: dict, file_in, where: str) -> dict:
    """``query_transformer_path`` / ``document_transformer_path`` (and their ``query_length`` /
    ``document_length``) of a ``Router`` whose ``query`` and ``document`` routes are one ``Transformer`` each;
    any other routing has no counterpart in :class:`RetrieverModel` and is refused."""
    structure, types = router.get("structure") or {}, router.get("types") or {}
    out: dict[str, Any] = {}
    for route, key in (("query", "query"), ("document", "document")):
        modules = structure.get(route) or []
        kinds = [str(types.get(m, "")).rsplit(".", 1)[-1] for m in modules]
        if kinds != ["Transformer"]:
            raise ConfigError(f"{where}: the {route!r} route is {list(zip(modules, kinds))}; RetrieverModel reads a "
                              "Router whose 'query' and 'document' routes are one Transformer module each")
        out[f"{key}_transformer_path"] = modules[0]
        length = _read_json(file_in(modules[0], "sentence_bert_config.json")).get("max_seq_length")
        if not length:  # sentence-transformers >= 5 keeps it in the tokenizer config
            length = _read_json(file_in(modules[0], "tokenizer_config.json")).get("model_max_length")
        if isinstance(length, int) and 0 < length < 100_000:
            out[f"{key}_length"] = length
    return out


def _pooling_from_st_config(cfg: dict, where: str) -> str:
    mode = cfg.get("pooling_mode")
    if mode is None:
        active = [m for key, m in _ST_LEGACY_POOLING.items() if cfg.get(key)]
        mode = active if len(active) != 1 else active[0]
        if not active:
            mode = "mean"  # sentence-transformers' own default for a config with every flag off
    if isinstance(mode, list):
        mode = mode[0] if len(mode) == 1 else tuple(mode)
    if mode not in _ST_POOLING:
        raise ConfigError(f"{where}: sentence-transformers pooling {mode!r} is not supported "
                          f"(only {', '.join(_ST_POOLING)}); pass pooling= to choose one")
    return _ST_POOLING[mode]


def read_sentence_transformers_settings(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> dict:
    """Pooling, normalisation, max length and prompts of a sentence-transformers model ({} if it is not one).

    Works the same for a local folder and a Hub repo id (files come through :func:`model_file`). Keys:
    ``pooling`` (``mean | cls | last``), ``normalize``, ``max_seq_length`` (when the model states it),
    ``query_prefix`` / ``target_prefix`` (from the ``query`` / ``document`` prompts) and ``transformer_path``
    (the folder of the Transformer module when it is not the root). ``similarity_fn_name="cosine"`` without a
    ``Normalize`` module gives ``normalize=True`` (and ``normalize_for_cosine``). A module the retriever cannot
    apply (``Dense``, ``LayerNorm``...) raises :class:`ConfigError`: its embeddings would differ.

    Example:
        >>> read_sentence_transformers_settings("sentence-transformers/all-MiniLM-L6-v2")  # doctest: +SKIP
        {'pooling': 'mean', 'normalize': True, 'max_seq_length': 256}
    """
    modules_path = model_file(name_or_path, "modules.json", **hub_kwargs)
    if modules_path is None:
        return {}
    subfolder = hub_kwargs.get("subfolder") or ""

    def file_in(module_dir: str, name: str) -> str | None:
        return model_file(name_or_path, name, **{**hub_kwargs, "subfolder": "/".join(p for p in (subfolder, module_dir) if p)})

    settings: dict[str, Any] = {"normalize": False}
    for module in _read_json(modules_path):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        module_dir = module.get("path", "") or ""
        if kind == "Normalize":
            settings["normalize"] = True
        elif kind == "Pooling":
            cfg = _read_json(file_in(module_dir, "config.json"))
            settings["pooling"] = _pooling_from_st_config(cfg, f"{name_or_path}/{module_dir}/config.json")
            if cfg.get("include_prompt") is False:
                settings["include_prompt"] = False
        elif kind == "Transformer":
            if module_dir:
                settings["transformer_path"] = module_dir
            bert_cfg = _read_json(file_in(module_dir, "sentence_bert_config.json"))
            if bert_cfg.get("max_seq_length"):
                settings["max_seq_length"] = int(bert_cfg["max_seq_length"])
            for key in ("query_length", "document_length"):  # sentence-transformers 6 per-task lengths
                if bert_cfg.get(key):
                    settings[key] = int(bert_cfg[key])
        elif kind == "Router":  # asymmetric towers: one Transformer per route
            settings.update(_router_towers(_read_json(file_in(module_dir, "router_config.json")), file_in,
                                           f"{name_or_path}/{module_dir or ''}router_config.json"))
        elif kind == "Dropout":  # no effect on embeddings (it drops nothing at inference)
            logger.info("%s: sentence-transformers Dropout module %s is not applied", name_or_path, module_dir)
        else:
            raise ConfigError(f"{name_or_path}: sentence-transformers module {kind} ({module_dir or 'the root'}, "
                              f"{module.get('type')}) cannot be applied by RetrieverModel (it encodes with "
                              f"Transformer, Pooling and Normalize only), so its embeddings would differ from "
                              f"SentenceTransformer's; use a model without the {kind} module, or "
                              f"sentence-transformers itself")
    st_cfg = _read_json(model_file(name_or_path, "config_sentence_transformers.json", **hub_kwargs))
    if st_cfg.get("similarity_fn_name") == "cosine" and not settings["normalize"]:
        settings.update(normalize=True, normalize_for_cosine=True)  # cosine = dot product of normalised vectors
    prompts = st_cfg.get("prompts") or {}
    for names, key in ((_QUERY_PROMPTS, "query_prefix"), (_TARGET_PROMPTS, "target_prefix")):
        for name in names:
            if prompts.get(name):
                settings[key] = prompts[name]
                break
    if settings.get("include_prompt") is False and ("query_prefix" in settings or "target_prefix" in settings):
        logger.warning("%s: the model pools without its prompt tokens (include_prompt=False); RetrieverModel pools "
                       "over them", name_or_path)
    return settings


def check_layer_count(name_or_path: str, value: Any, hub_kwargs: dict) -> None:
    """``num_hidden_layers`` must be a positive integer no larger than the checkpoint's (more layers would be
    randomly initialised, silently)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"num_hidden_layers must be a positive integer, got {value!r}")
    try:
        available = getattr(AutoConfig.from_pretrained(name_or_path, **hub_kwargs), "num_hidden_layers", None)
    except (OSError, ValueError):
        return
    if isinstance(available, int) and value > available:
        raise ConfigError(f"num_hidden_layers={value}: {name_or_path} has only {available} layers; the extra ones "
                          f"would be randomly initialised. Pass at most {available}")


__all__ = ["check_folder_links", "check_layer_count", "check_local_folder", "looks_local", "model_file", "read_sentence_transformers_settings"]
