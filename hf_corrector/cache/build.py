"""Building a stale cache: every corpus row encoded by the target tower, with its provenance; resumable.

With ``shard_dir`` each finished shard of ``shard_size`` rows is written there atomically and a killed build resumes
from the shards already written; ``shard_dir/build_info.json`` records which corpus, weights and settings wrote them,
so shards of another build are refused instead of mixed in. :meth:`StaleCache.build` is the entry point.

Example:
    >>> doc_ids, embeddings, provenance = encode_corpus(corpus, retriever)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm

from ..atomic_io import fsync_file, list_names, write_text_atomic, writer_gone, writer_tag
from ..errors import CacheCorruptError, CacheMismatchError, ConfigError
from .provenance import TEXTS_KEY, WEIGHTS_KEY, fingerprint_corpus, fingerprint_retriever, short
from .schema import BUILD_INFO_FILE, FORMAT_VERSION, check_dtype, preview

if TYPE_CHECKING:
    from ..models.retriever import RetrieverModel

logger = logging.getLogger(__name__)


def encode_corpus(
    corpus: datasets.Dataset,
    retriever: RetrieverModel,
    batch_size: int = 64,
    dtype: str = "float32",
    shard_dir: str | os.PathLike | None = None,
    shard_size: int = 4096,
    show_progress_bar: bool = True,
    device: str | torch.device | None = None,
    max_length: int | None = None,
) -> tuple[list[str], torch.Tensor, dict]:
    """Encode every corpus row (columns ``doc_id``, ``text``) with ``retriever``'s target tower.

    Targets are truncated to ``max_length`` tokens (default: the retriever's ``target_max_length``). The
    provenance records the encoder settings and fingerprints of the target weights and of the corpus ids and
    texts (see :meth:`StaleCache.check_provenance`). Returns ``(doc_ids, embeddings, provenance)``.

    With ``shard_dir`` each finished shard of ``shard_size`` rows is written there atomically; a build that was
    killed resumes from the shards already written. The shards belong to this corpus and these target weights
    (recorded in ``shard_dir/build_info.json``): shards of other weights, other texts or other settings raise
    :class:`CacheMismatchError` instead of being mixed in.
    """
    check_dtype(dtype)
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size), ("max_length", max_length)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"StaleCache.build: {name} must be a positive integer, got {value!r}")
    if len(corpus) == 0:
        raise CacheMismatchError("cannot build a cache for an empty corpus")
    doc_ids = [str(d) for d in corpus["doc_id"]]
    texts = list(corpus["text"])
    length = int(max_length or retriever.config.target_max_length)
    provenance = {
        **retriever.provenance(),
        "target_max_length": length,
        "target_prefix": retriever.config.target_prefix,
        "dtype": dtype,
        WEIGHTS_KEY: fingerprint_retriever(retriever),
        **fingerprint_corpus(doc_ids, texts),
    }

    def encode(chunk: list[str], progress: bool) -> torch.Tensor:
        return retriever.encode_targets(chunk, batch_size=batch_size, show_progress_bar=progress, device=device,
                                        max_length=length, desc="building the cache")

    if shard_dir is None:
        return doc_ids, encode(texts, show_progress_bar), provenance
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    remove_leftover_shards(shard_dir)
    build_info = {"format_version": FORMAT_VERSION, "num_rows": len(doc_ids), "shard_size": shard_size,
                  "provenance": {k: v for k, v in provenance.items() if k != "dtype"}}  # shards are float32
    claim_shard_dir(shard_dir, json.loads(json.dumps(build_info)))
    parts = []
    starts = range(0, len(doc_ids), shard_size)
    done = 0
    for k, start in enumerate(tqdm(starts, desc="building the cache (shards)", disable=not show_progress_bar)):
        shard_file = shard_dir / f"shard-{k:05d}.npy"
        stop = min(start + shard_size, len(doc_ids))
        if shard_file.exists():
            part = torch.from_numpy(load_shard(shard_file, (stop - start, retriever.embedding_dim)))
            done += 1
        else:
            part = encode(texts[start:stop], False)
            tmp = shard_file.with_name(f".{shard_file.name}.tmp-{writer_tag()}.npy")
            np.save(tmp, part.numpy())
            fsync_file(tmp)
            os.rename(tmp, shard_file)
        parts.append(part)
    if done:
        logger.info("resumed cache build: %d of %d shards were already written", done, len(starts))
    return doc_ids, torch.cat(parts), provenance


def remove_leftover_shards(shard_dir: Path) -> None:
    """Remove ``.shard-*.npy.tmp-<tag>.npy`` files of killed builds whose writer is gone."""
    for entry in shard_dir.glob(".shard-*.npy.tmp-*"):
        tag = entry.name.split(".tmp-", 1)[1].removesuffix(".npy")
        try:
            if entry.is_file() and writer_gone(entry, tag):
                entry.unlink()
                logger.info("removed %s, left by a killed cache build", entry)
        except OSError as err:
            logger.debug("could not remove leftover %s (%s)", entry, err)


def load_shard(shard_file: Path, shape: tuple[int, int]) -> np.ndarray:
    try:
        part = np.load(shard_file, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise CacheCorruptError(f"{shard_file}: cannot be read as a shard ({err}); delete it and build again "
                                f"(only the missing shards are encoded)") from None
    if part.shape != shape or part.dtype != np.float32:
        raise CacheCorruptError(f"{shard_file}: shape {part.shape} {part.dtype}, expected {shape} float32; delete it "
                                f"and build again (only the missing shards are encoded)")
    return part


def claim_shard_dir(shard_dir: Path, build_info: dict) -> None:
    """Record ``build_info`` in a new shard folder, or check that the shards already there belong to this build."""
    info_file = shard_dir / BUILD_INFO_FILE
    fix = (f"Shards are reused only by the same corpus, weights and settings: delete {shard_dir} or pass a new "
           f"shard_dir")
    if not info_file.exists():
        orphans = sorted(p.name for p in shard_dir.glob("shard-*.npy"))
        if orphans:
            raise CacheMismatchError(f"{shard_dir} holds {len(orphans)} shard file(s) ({list_names(orphans)}) but no "
                                     f"{BUILD_INFO_FILE}, so nothing tells which weights and corpus wrote them. {fix}")
        write_text_atomic(info_file, json.dumps(build_info, indent=2))
        return
    try:
        previous = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{info_file}: not valid JSON ({err}). {fix}") from None
    if previous == build_info:
        return
    old = previous.get("provenance", {}) if isinstance(previous, dict) else {}
    new = build_info["provenance"]
    if not isinstance(old, dict) or WEIGHTS_KEY not in old:
        reason = "were written by an older hf_corrector that recorded no weight or text fingerprints"
    elif old.get(TEXTS_KEY) != new[TEXTS_KEY] or old.get("doc_ids_fingerprint") != new["doc_ids_fingerprint"]:
        what = "corpus texts" if old.get("doc_ids_fingerprint") == new["doc_ids_fingerprint"] else "corpus (doc ids)"
        reason = (f"were encoded over another {what} (texts {short(old.get(TEXTS_KEY))}, ids "
                  f"{short(old.get('doc_ids_fingerprint'))}; this corpus: texts {short(new[TEXTS_KEY])}, ids "
                  f"{short(new['doc_ids_fingerprint'])})")
    elif old.get(WEIGHTS_KEY) != new[WEIGHTS_KEY]:
        reason = (f"were encoded by other weights ({short(old.get(WEIGHTS_KEY))}) than this retriever's target tower "
                  f"({short(new[WEIGHTS_KEY])})")
    else:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        changed += [k for k in ("num_rows", "shard_size", "format_version") if previous.get(k) != build_info.get(k)]
        reason = "were written with other settings (" + ", ".join(
            f"{k}: {preview(old.get(k, previous.get(k)), 40)} -> {preview(new.get(k, build_info.get(k)), 40)}"
            for k in changed) + ")"
    raise CacheMismatchError(f"the shards in {shard_dir} {reason}. {fix}")


__all__ = ["claim_shard_dir", "encode_corpus", "load_shard", "remove_leftover_shards"]
