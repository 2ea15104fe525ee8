"""A cache folder on disk: ``cache.arrow`` (one Arrow IPC stream record batch), ``cache_info.json`` and the card.

A save writes into a hidden sibling ``.NAME.tmp-<host>-<pid>-<random>``, fsyncs and swaps it into place
(:func:`hf_corrector.atomic_io.write_folder_atomically`). It never removes what a cache save did not write: an
existing target must be a cache folder (only ``cache.arrow``, ``cache_info.json`` and ``README.md``) or empty,
otherwise :class:`UnsafeOverwriteError`. A load memory-maps the file (zero-copy) after checking ``cache_info.json``
and the schema (and, by default, the checksum).

Example:
    >>> table, info = read_folder("scifact-cache", verify="rows")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from .. import atomic_io
from ..atomic_io import list_names, sha256_file, write_bytes_durably, write_folder_atomically
from ..errors import CacheCorruptError, UnsafeOverwriteError
from .schema import (CACHE_FILE, CACHE_FOLDER_FILES, CARD_FILE, DAMAGED, INFO_FILE, looks_like_cache_info, validate_info,
                     validate_table)

logger = logging.getLogger(__name__)


def write_stream(table: pa.Table, path: Path) -> None:
    """Write ``table`` as one Arrow IPC stream record batch (memory-mappable, zero-copy to read) and fsync it.

    64-bit lengths are allowed: the embedding column's values array holds rows x dim numbers, past 2^31 from
    5.6M rows at d = 384 (the writer refuses such an array by default)."""
    options = pa.ipc.IpcWriteOptions(allow_64bit=True)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table, max_chunksize=max(1, table.num_rows))
    atomic_io.fsync_file(path)


def remove_cache_dir(path: Path) -> bool:
    """Remove a folder that a cache save wrote: its cache files, then the folder. Anything else in it is kept (and
    so is the folder, with a warning). True if the folder is gone."""
    if path.is_symlink() or not path.is_dir():
        return False
    for entry in os.scandir(path):
        if entry.name in CACHE_FOLDER_FILES and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        logger.warning("kept %s: it holds files a cache save did not write (%s)", path, list_names(os.listdir(path)))
        return False
    return True


def remove_leftovers(target: str | os.PathLike) -> list[Path]:
    """Remove the hidden ``.NAME.tmp-*`` / ``.NAME.old-*`` folders that killed cache saves of ``target`` left.

    Only leftovers whose writer is gone are touched (the name carries the writer's host and pid; names without a
    pid, from older versions, must be untouched for :data:`~hf_corrector.atomic_io.LEGACY_LEFTOVER_AGE_S`), and only
    cache files are deleted from them. Returns the folders removed.
    """
    return atomic_io.remove_leftovers(target, remove_cache_dir)


def check_save_target(path: Path) -> None:
    """Raise :class:`UnsafeOverwriteError` unless saving to ``path`` can only replace a cache (or an empty folder)."""
    if path.is_symlink():
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: it is a symbolic link, and saving would replace the link; "
            f"save to the folder it points to ({os.path.realpath(path)}) or to a new path")
    if not path.exists():
        return
    if not path.is_dir():
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: it is an existing file, and saving would replace it; "
            f"save to a folder path that does not exist yet (for example {path.with_name(path.name + '_cache')})")
    entries = os.listdir(path)
    if not entries:
        return
    foreign = [e for e in entries
               if e not in CACHE_FOLDER_FILES or (path / e).is_symlink() or not (path / e).is_file()]
    if foreign:
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: the folder holds files a cache save did not write "
            f"({list_names(foreign)}), and saving would delete them; save the cache to a subfolder (for example "
            f"{path / 'stale_cache'}) or to a new path")
    if INFO_FILE not in entries or not looks_like_cache_info(path / INFO_FILE):
        raise UnsafeOverwriteError(
            f"refusing to save the stale cache to {path}: the folder holds {list_names(entries)} but no valid "
            f"{INFO_FILE}, so it is not a saved cache; save to a new path, or delete the folder if it is a damaged "
            f"cache you no longer need")


def write_folder(path: str | os.PathLike, table: pa.Table, info: dict, card: str | None = None) -> None:
    """Save ``table`` with ``info`` (plus its ``sha256``) and an optional card to the folder ``path``, atomically."""

    def fill(tmp: Path) -> None:
        write_stream(table, tmp / CACHE_FILE)
        files = {INFO_FILE: json.dumps({**info, "sha256": sha256_file(tmp / CACHE_FILE)}, indent=2)}
        if card is not None:
            files[CARD_FILE] = card
        for name, text in files.items():
            write_bytes_durably(tmp / name, text.encode("utf-8"))

    write_folder_atomically(path, fill, check_target=check_save_target, remove_dir=remove_cache_dir)


def read_folder(path: Path, verify: str) -> tuple[pa.Table, dict]:
    """The memory-mapped table of the cache folder ``path`` and its validated ``cache_info.json``.

    ``verify="checksum"`` also compares the SHA-256 (reads the whole file); the schema is always checked.
    """
    remove_leftovers(path)
    info_file, data_file = path / INFO_FILE, path / CACHE_FILE
    if not info_file.is_file() or not data_file.is_file():
        raise CacheCorruptError(f"{path} is not a complete cache folder (needs {CACHE_FILE} and {INFO_FILE})")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:  # ValueError covers JSONDecodeError and UnicodeDecodeError
        raise CacheCorruptError(f"{info_file}: not valid JSON ({err}); {DAMAGED}") from None
    info = validate_info(info, str(info_file), checksum=verify == "checksum")
    if verify == "checksum" and sha256_file(data_file) != info["sha256"]:
        raise CacheCorruptError(f"{data_file}: checksum does not match {info_file}; {DAMAGED}")
    try:  # memory-mapped: the same zero-copy read that datasets.Dataset.from_file does, without its hashing
        with pa.memory_map(str(data_file), "r") as source:
            table = pa.ipc.open_stream(source).read_all()
        table.validate(full=True)  # offsets and UTF-8 of the ids; the float values are not touched
    except (pa.ArrowException, OSError, ValueError) as err:
        raise CacheCorruptError(f"{data_file}: cannot be read as Arrow ({err}); {DAMAGED}") from None
    validate_table(table, info, str(data_file), str(info_file))
    return table, info


def embedding_span(data_file: Path) -> tuple[int, int]:
    """``(offset, row_bytes)``: where the embedding values of the single-batch cache file ``data_file`` start in
    it, and the bytes of one row, so rows can be read with plain file reads (into a buffer of one's own, without
    the pages of a memory map counting in the process's memory)."""
    with pa.memory_map(str(data_file), "r") as source:
        base = source.read_buffer()  # the whole mapping; the table's buffers are slices of it (zero-copy)
        table = pa.ipc.open_stream(pa.BufferReader(base)).read_all()
        column = table.column("embedding")
        if column.num_chunks != 1:
            raise CacheCorruptError(f"{data_file}: {column.num_chunks} record batches, expected 1; {DAMAGED}")
        lists = column.chunk(0)
        values = lists.values  # the child array (offset 0 in our files); lists.offset is the table's first row
        width = values.type.bit_width // 8
        row_bytes = lists.type.list_size * width
        start = values.buffers()[1].address + (values.offset + lists.offset * lists.type.list_size) * width
        offset = start - base.address
    if not 0 <= offset <= data_file.stat().st_size:
        raise CacheCorruptError(f"{data_file}: the embedding values are not inside the file; {DAMAGED}")
    return offset, row_bytes


__all__ = ["check_save_target", "embedding_span", "read_folder", "remove_cache_dir", "remove_leftovers", "write_folder", "write_stream"]
