"""The served index on the Hub: one dataset-repo commit up, every file down from one commit.

A served index is published as the cache is (its vectors as parquet with ``cache_info.json`` and the dataset card)
plus ``index.faiss`` and ``serving_manifest.json``; :class:`~hf_corrector.serving.CorrectedIndex` verifies what
:func:`download_served` returns exactly as it verifies a folder.

Example:
    >>> push_served(vectors, blob, manifest, "me/served-corpus")  # doctest: +SKIP
    >>> manifest, vectors, index_file = download_served("me/served-corpus")  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from ..cache.card import render_cache_card
from ..cache.stale_cache import StaleCache
from . import storage


def push_served(vectors: StaleCache, index_blob: bytes, manifest: dict, repo_id: str, private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload served index") -> str:
    """Create the dataset repo ``repo_id`` if needed and upload every file of the served index in one commit."""
    from huggingface_hub import CommitOperationAdd, HfApi

    parquet = io.BytesIO()
    vectors.dataset.to_parquet(parquet)
    card = render_cache_card(vectors, keep_existing_metadata=False)
    files = {"data/train-00000-of-00001.parquet": parquet.getvalue(),
             "cache_info.json": json.dumps(vectors.info(), indent=2).encode(),
             "README.md": card.encode(), storage.INDEX_FILE: index_blob,
             storage.MANIFEST_FILE: json.dumps(manifest, indent=2).encode()}
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.create_commit(repo_id, repo_type="dataset", commit_message=commit_message,
                      operations=[CommitOperationAdd(path_in_repo=k, path_or_fileobj=v) for k, v in files.items()])
    return repo_id


def download_served(repo_id: str, revision: str | None = None, token: str | None = None,
                    verify: str = "checksum") -> tuple[dict | None, StaleCache, Path | None]:
    """``(manifest or None, vectors, local index.faiss or None)`` of ``repo_id``, all read from one commit (the one
    ``revision`` resolves to now), the vectors verified by :meth:`StaleCache.from_hub`."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    sha = HfApi(token=token).dataset_info(repo_id, revision=revision).sha or revision

    def download(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, name, repo_type="dataset", revision=sha, token=token))
        except EntryNotFoundError:
            return None

    manifest_file = download(storage.MANIFEST_FILE)
    manifest = storage.read_manifest(manifest_file) if manifest_file is not None else None
    vectors = StaleCache.from_hub(repo_id, revision=sha, token=token, verify=verify)
    return manifest, vectors, download(storage.INDEX_FILE)
