"""How a served index is stored: one folder (or one Hub commit) holding the vectors, the faiss index and a manifest.

Layout (``CorrectedIndex.save(path)``)::

    path/vectors/            the served vectors, a StaleCache folder (cache.arrow, cache_info.json, README.md)
    path/index.faiss         the serialised faiss index over them
    path/serving_manifest.json  what ties the two together: rows, dimension, the index kind, a fingerprint of the
                                vectors' content, the SHA-256 of index.faiss and of the vectors' provenance

A save writes the whole folder under a hidden temporary name next to ``path`` and swaps it in (the swap of
:func:`hf_corrector.atomic_io.write_folder_atomically`, shared with the cache), so a SIGKILL at any moment leaves the previous
folder or the new one, never vectors of one save beside the index of another. A target that holds anything a served
save did not write (an ``index.faiss`` without a manifest, a user's ``README.md``, a training ``output_dir``) is
refused; nothing of it is deleted.

A load checks everything it reads: the manifest's fields, the vectors against the manifest (rows, dimension, content
fingerprint, provenance digest), ``index.faiss`` against its checksum and kind, and the faiss index against the vectors (rows, dimension, and a
sample search whose scores must be the exact inner products). Any mismatch raises :class:`CacheCorruptError` naming
the file.

Example:
    >>> index.save("served"); CorrectedIndex.load("served", retriever=retriever)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic_io import list_names, write_folder_atomically
from ..atomic_io import remove_leftovers as remove_leftovers_of
from ..cache.folder import remove_cache_dir, remove_leftovers
from ..cache.schema import CACHE_FOLDER_FILES
from ..errors import CacheCorruptError, UnsafeOverwriteError
from ..negatives.candidates import INDEX_KINDS

logger = logging.getLogger(__name__)

VECTORS_DIR = "vectors"
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "serving_manifest.json"
# what a served save writes at the top of its folder (the card lives in vectors/; a README.md up here is a user's own
# or a Hub download's, and a save never replaces or deletes it)
SERVED_FOLDER_ENTRIES = frozenset({VECTORS_DIR, INDEX_FILE, MANIFEST_FILE})
MANIFEST_VERSION = 1
SAMPLE_QUERIES = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
TEMPORARY = re.compile(r"^\..+\.served-(?:tmp|old)-[^/]+$")  # a killed save's folder, never loaded
_DAMAGED = "the served index is damaged: build it again (CorrectedIndex.from_trainer) or restore a copy"


def vectors_fingerprint(vectors: Any) -> str:
    """SHA-256 over the served vectors' content (ids, steps and stored values): the same on disk and on the Hub."""
    digest = hashlib.sha256()
    for doc_id in vectors.doc_ids:
        raw = doc_id.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "little") + raw)
    digest.update(np.ascontiguousarray(vectors.steps.numpy().astype("<i8")).tobytes())
    storage = vectors.matrix()
    flat = storage.contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    digest.update(f"|{vectors.dtype}|{len(vectors)}|{vectors.dim}".encode())
    return digest.hexdigest()


def provenance_digest(provenance: dict) -> str:
    """SHA-256 of the vectors' provenance as ``cache_info.json`` stores it (canonical JSON): which retriever, map,
    corrector and budget served them. In the manifest, so an edited or deleted fingerprint there is corruption."""
    canonical = json.dumps(json.loads(json.dumps(provenance)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def make_manifest(vectors: Any, index_blob: bytes, index_kind: str) -> dict:
    return {"format_version": MANIFEST_VERSION, "num_rows": len(vectors), "embedding_dim": vectors.dim,
            "index_kind": index_kind, "index_file": INDEX_FILE, "index_sha256": hashlib.sha256(index_blob).hexdigest(),
            "vectors_fingerprint": vectors_fingerprint(vectors),
            "provenance_sha256": provenance_digest(vectors.provenance)}


def validate_manifest(manifest: Any, where: str) -> dict:
    """Check the manifest's fields (types and ranges); :class:`CacheCorruptError` names ``where`` and the field."""
    if not isinstance(manifest, dict):
        raise CacheCorruptError(f"{where}: expected a JSON object, got {type(manifest).__name__}; {_DAMAGED}")
    for key, minimum in (("format_version", 1), ("num_rows", 0), ("embedding_dim", 1)):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise CacheCorruptError(f"{where}: field {key!r} must be an integer >= {minimum}, got {value!r}; "
                                    f"{_DAMAGED}")
    if manifest["format_version"] > MANIFEST_VERSION:
        raise CacheCorruptError(f"{where}: format_version {manifest['format_version']} is newer than this "
                                f"hf_corrector reads ({MANIFEST_VERSION}); upgrade hf_corrector")
    if manifest.get("index_kind") not in INDEX_KINDS:
        raise CacheCorruptError(f"{where}: field 'index_kind' is {manifest.get('index_kind')!r}, not one of "
                                f"{list(INDEX_KINDS)}; {_DAMAGED}")
    # provenance_sha256: absent in manifests written before it was recorded (then the provenance is not covered)
    for key in ("index_sha256", "vectors_fingerprint") + (("provenance_sha256",) if "provenance_sha256" in manifest
                                                         else ()):
        if not (isinstance(manifest.get(key), str) and _HEX64.match(manifest[key])):
            raise CacheCorruptError(f"{where}: field {key!r} is {manifest.get(key)!r}, not a SHA-256 hex digest; "
                                    f"{_DAMAGED}")
    if manifest.get("index_file") != INDEX_FILE:
        raise CacheCorruptError(f"{where}: field 'index_file' is {manifest.get('index_file')!r}, expected "
                                f"{INDEX_FILE!r}; {_DAMAGED}")
    return manifest


def read_manifest(file: Path) -> dict:
    try:
        manifest = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CacheCorruptError(f"{file}: not valid JSON ({err}); {_DAMAGED}") from None
    return validate_manifest(manifest, str(file))


def check_vectors(manifest: dict, vectors: Any, manifest_where: str, vectors_where: str) -> None:
    """The vectors must be the ones the manifest was written for (rows, dimension, content)."""
    for key, actual in (("num_rows", len(vectors)), ("embedding_dim", vectors.dim)):
        if manifest[key] != actual:
            raise CacheCorruptError(f"{vectors_where}: {key} {actual}, but {manifest_where} says {manifest[key]}: the "
                                    f"vectors are not the ones this index was saved with; {_DAMAGED}")
    if vectors_fingerprint(vectors) != manifest["vectors_fingerprint"]:
        raise CacheCorruptError(f"{vectors_where}: the vectors' content differs from the fingerprint in "
                                f"{manifest_where} (vectors of another save, or edited); {_DAMAGED}")
    if "provenance_sha256" in manifest and provenance_digest(vectors.provenance) != manifest["provenance_sha256"]:
        raise CacheCorruptError(f"{vectors_where}: the provenance in cache_info.json (which retriever, map and "
                                f"corrector served these vectors) differs from the one {manifest_where} was saved with "
                                f"(edited, or a field deleted); {_DAMAGED}")


def read_index_blob(file: Path, manifest: dict | None, verify: str) -> bytes:
    blob = Path(file).read_bytes()
    if manifest is not None and verify == "checksum" and hashlib.sha256(blob).hexdigest() != manifest["index_sha256"]:
        raise CacheCorruptError(f"{file}: checksum does not match the manifest's index_sha256; {_DAMAGED}")
    return blob


def verify_index(index: Any, vectors: Any, where: str, kind: str, sample: int = SAMPLE_QUERIES, seed: int = 0) -> None:
    """The faiss ``index`` must index ``vectors``: same rows and dimension, inner-product metric, and on a sample of
    stored rows used as queries every score it returns is the exact inner product of the returned row (and, for a
    ``flat`` index, the top scores are those of an exact search)."""
    import faiss

    n, d = len(vectors), vectors.dim
    if int(index.d) != d:
        raise CacheCorruptError(f"{where}: the faiss index has dimension {index.d}, the vectors {d}; {_DAMAGED}")
    if int(index.ntotal) != n:
        raise CacheCorruptError(f"{where}: the faiss index holds {index.ntotal} rows, the vectors {n}; {_DAMAGED}")
    if int(index.metric_type) != faiss.METRIC_INNER_PRODUCT:
        raise CacheCorruptError(f"{where}: the faiss index does not use inner product (metric {index.metric_type}); "
                                f"{_DAMAGED}")
    if n == 0:
        return
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(sample, n)]
    matrix = vectors.matrix()
    q = vectors.rows(rows).float()
    k = min(10, n)
    scores, ids = index.search(np.ascontiguousarray(q.numpy()), k)
    ids_t = torch.from_numpy(ids.astype(np.int64))
    scores_t = torch.from_numpy(scores).float()
    if bool((ids_t >= n).any()):
        raise CacheCorruptError(f"{where}: the faiss index returns rows beyond the vectors' {n}; {_DAMAGED}")
    valid = ids_t >= 0
    if not bool(valid[:, 0].all()):
        raise CacheCorruptError(f"{where}: the faiss index finds nothing for stored rows; {_DAMAGED}")
    gathered = matrix[ids_t.clamp(min=0).reshape(-1)].float().reshape(len(rows), k, d)
    exact = torch.einsum("bd,bkd->bk", q, gathered)
    scale = q.norm(dim=1, keepdim=True) * gathered.norm(dim=2)
    tol = 1e-3 * scale.clamp(min=1.0)
    if bool(((exact - scores_t).abs() > tol)[valid].any()):
        raise CacheCorruptError(f"{where}: the scores of the faiss index disagree with an exact search over the "
                                f"vectors (an index of other vectors); {_DAMAGED}")
    if kind == "flat":
        top = (q @ matrix.float().T).topk(k, dim=1).values
        if not torch.allclose(top, scores_t, atol=float(tol.max())):
            raise CacheCorruptError(f"{where}: the flat index's top-{k} scores differ from an exact search over the "
                                    f"vectors; {_DAMAGED}")


# -- the folder: refusing foreign targets, the atomic swap, leftovers of killed saves --------------------------------
def _looks_like_served(path: Path) -> bool:
    if (path / MANIFEST_FILE).is_file():
        try:
            read_manifest(path / MANIFEST_FILE)
            return True
        except CacheCorruptError:
            return False
    info = path / VECTORS_DIR / "cache_info.json"  # saved before manifests existed: serving provenance
    try:
        return "serving" in json.loads(info.read_text(encoding="utf-8")).get("provenance", {})
    except (OSError, ValueError, AttributeError):
        return False


def check_save_target(path: Path) -> None:
    """Raise :class:`UnsafeOverwriteError` unless ``path`` is absent, empty, or a served index folder that only
    holds what a served save writes."""
    what = "refusing to save the served index to"
    if path.is_symlink():
        raise UnsafeOverwriteError(f"{what} {path}: it is a symbolic link; save to {os.path.realpath(path)} or to a "
                                   f"new path")
    if not path.exists():
        return
    if not path.is_dir():
        raise UnsafeOverwriteError(f"{what} {path}: it is an existing file; save to a folder path that does not exist")
    entries = os.listdir(path)
    if not entries:
        return
    foreign = [e for e in entries if e not in SERVED_FOLDER_ENTRIES or (path / e).is_symlink()
               or (path / e).is_dir() != (e == VECTORS_DIR)]
    vectors_dir = path / VECTORS_DIR
    if vectors_dir.is_dir() and not vectors_dir.is_symlink():
        foreign += [f"{VECTORS_DIR}/{e}" for e in os.listdir(vectors_dir) if e not in CACHE_FOLDER_FILES]
    if foreign:
        raise UnsafeOverwriteError(f"{what} {path}: the folder holds files a served save did not write "
                                   f"({list_names(foreign)}), and saving would replace or delete them; save to a new path "
                                   f"or a subfolder (for example {path / 'served'})")
    if not _looks_like_served(path):
        raise UnsafeOverwriteError(f"{what} {path}: it holds {list_names(entries)} but no valid {MANIFEST_FILE}, so it "
                                   f"is not a served index this library saved (an {INDEX_FILE} there would be "
                                   f"silently replaced); save to a new path, or delete the folder if it is yours")


def remove_served_dir(path: Path) -> bool:
    """Remove a folder a served save wrote: only its own files (anything else is kept, with a warning)."""
    if path.is_symlink() or not path.is_dir():
        return False
    vectors_dir = path / VECTORS_DIR
    remove_leftovers(vectors_dir)  # a vectors save killed inside the folder
    if vectors_dir.is_dir() and not vectors_dir.is_symlink():
        remove_cache_dir(vectors_dir)
    for name in (INDEX_FILE, MANIFEST_FILE):
        if (path / name).is_file() and not (path / name).is_symlink():
            os.unlink(path / name)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        logger.warning("kept %s: it holds files a served save did not write (%s)", path, list_names(os.listdir(path)))
        return False
    return True


def remove_served_leftovers(target: Path) -> None:
    """Remove ``.NAME.served-tmp-*`` / ``.NAME.served-old-*`` folders of killed saves of ``target`` whose writer
    is gone."""
    remove_leftovers_of(target, remove_served_dir, kind="served-")


def write_served(path: Path, write_contents: Any) -> None:
    """Write a served folder atomically: ``write_contents(tmp)`` fills a temporary folder, which is then swapped in."""
    write_folder_atomically(path, write_contents, check_target=check_save_target, remove_dir=remove_served_dir,
                            kind="served-")


__all__ = ["INDEX_FILE", "MANIFEST_FILE", "VECTORS_DIR", "check_save_target", "check_vectors", "make_manifest",
           "read_index_blob", "read_manifest", "remove_served_leftovers", "validate_manifest", "vectors_fingerprint",
           "verify_index", "write_served"]
