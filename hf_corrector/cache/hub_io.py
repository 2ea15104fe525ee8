"""A stale cache on the Hub: a dataset repo in ``datasets``' layout, pushed in one commit, loaded back verified.

The repo holds ``data/train-0000i-of-0000n.parquet`` (one file per table given: one for a cache in memory, one per
shard for a sharded cache folder, so only one shard is in memory at a time), ``cache_info.json`` (provenance, rows,
dtype) and the dataset card ``README.md``, whose ``configs`` / ``dataset_info`` metadata are written by ``datasets``'
own :class:`~datasets.utils.metadata.MetadataConfigs` and :class:`~datasets.info.DatasetInfosDict`, so
``datasets.load_dataset(repo)`` and :meth:`StaleCache.from_hub` read it as one split.

Example:
    >>> push_tables("me/cache", [cache.dataset.data.table], cache.info(), card="# my cache")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
from datasets import DatasetInfo, Features
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import CommitOperationAdd, DatasetCard, HfApi, hf_hub_download

from ..errors import CacheCorruptError
from .schema import CARD_FILE, DAMAGED, INFO_FILE, validate_info, validate_table

logger = logging.getLogger(__name__)

DATA_FILES = "data/train-*"


def with_layout_metadata(card: str, schema: pa.Schema) -> str:
    """``card`` with the ``configs`` and ``dataset_info`` YAML that describe the parquet files (as ``datasets``
    writes them when it pushes a dataset itself)."""
    parsed = DatasetCard(card)
    MetadataConfigs({"default": {"data_files": [{"split": "train", "path": DATA_FILES}]}}).to_dataset_card_data(
        parsed.data)
    DatasetInfosDict({"default": DatasetInfo(features=Features.from_arrow_schema(schema))}).to_dataset_card_data(
        parsed.data)
    return str(parsed)


def push_tables(repo_id: str, tables: Iterable[pa.Table], info: dict, card: str, *, num_tables: int = 1,
                private: bool | None = None, token: str | None = None, layout_metadata: bool = True,
                commit_message: str = "Upload stale cache") -> str:
    """Publish the cache rows ``tables`` (in row order), ``info`` and ``card`` as the dataset repo ``repo_id`` in
    one commit; returns the repo id. ``layout_metadata``: add the parquet layout to the card's YAML."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
    with tempfile.TemporaryDirectory() as tmp:
        import pyarrow.parquet as pq

        ops, schema = [], None
        for i, table in enumerate(tables):
            local = Path(tmp) / f"train-{i:05d}-of-{num_tables:05d}.parquet"
            pq.write_table(table, local)
            ops.append(CommitOperationAdd(f"data/{local.name}", str(local)))
            schema = table.schema
        ops.append(CommitOperationAdd(INFO_FILE, json.dumps(info, indent=2).encode()))
        if layout_metadata and schema is not None:
            card = with_layout_metadata(card, schema)
        ops.append(CommitOperationAdd(CARD_FILE, card.encode()))
        api.create_commit(repo_id, ops, repo_type="dataset", commit_message=commit_message)
    return repo_id


def read_hub(repo_id: str, revision: str | None = None, token: str | None = None) -> tuple[pa.Table, dict]:
    """The rows and the validated ``cache_info.json`` of a cache published with :func:`push_tables` (the parquet on
    the Hub is re-encoded, so there is no byte checksum to compare)."""
    import datasets

    where = f"{repo_id}/{INFO_FILE}"
    try:
        info = json.loads(Path(hf_hub_download(repo_id, INFO_FILE, repo_type="dataset", revision=revision,
                                               token=token)).read_text(encoding="utf-8"))
    except ValueError as err:
        raise CacheCorruptError(f"{where}: not valid JSON ({err}); {DAMAGED}") from None
    info = validate_info(info, where, checksum=False)
    ds = datasets.load_dataset(repo_id, split="train", revision=revision, token=token)
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    validate_table(table, info, f"{repo_id} (dataset rows)", where)
    return table, info


__all__ = ["push_tables", "read_hub", "with_layout_metadata"]
