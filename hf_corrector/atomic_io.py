"""Crash-safe filesystem writes shared by the cache, the checkpoints and the served index.

Everything here follows one rule: a reader sees the previous content or the new one, never a torn mix, also after a
SIGKILL at any moment, and nothing a save did not write is ever deleted.

* files: :func:`write_bytes_durably` (write and fsync in place, inside a temporary folder) and
  :func:`write_text_atomic` (temporary name, fsync, ``os.replace``, fsync of the folder);
* folders: :func:`install_dir` swaps a finished temporary folder into place (one ``renameat2(RENAME_EXCHANGE)`` on
  Linux, two renames elsewhere); :func:`write_folder_atomically` is the whole save (check, fill a temporary, swap);
* leftovers: temporary names carry the writer's host and pid (:func:`writer_tag`), so a later process removes a
  killed writer's temporaries (:func:`remove_leftovers`) and never a live one's.

Example:
    >>> from pathlib import Path; import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> write_text_atomic(folder / "info.json", '{"rows": 3}'); (folder / "info.json").read_text()
    '{"rows": 3}'
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

#: leftovers whose name carries no writer pid (written by hf_corrector before this scheme) are removed after this long
LEGACY_LEFTOVER_AGE_S = 3600.0


# -- durable writes ---------------------------------------------------------------------------------------------------
def fsync_dir(path: str | os.PathLike) -> None:
    """Make a folder's entries (new names, renames) durable; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file's content to disk (opened for writing where allowed: some platforms need it to fsync)."""
    try:
        fh = open(path, "rb+")
    except PermissionError:
        fh = open(path, "rb")
    with fh:
        os.fsync(fh.fileno())


def write_bytes_durably(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (for files inside a temporary folder that is swapped in later)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace the file ``path`` by ``text`` atomically: a temporary sibling, fsync, ``os.replace``, fsync of the
    folder. A crash leaves the old file or the new one (and at most a hidden temporary of a dead writer)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{writer_tag()}")
    try:
        write_bytes_durably(tmp, text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 4 MiB blocks (a progress bar for files over 256 MiB)."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as fh, tqdm(total=size, unit="B", unit_scale=True, desc=f"checksum of {Path(path).name}",
                                      disable=size < (256 << 20)) as bar:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


# -- swapping a finished folder into place ----------------------------------------------------------------------------
def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _remove_tree(path: Path) -> bool:
    shutil.rmtree(path, ignore_errors=True)
    return not path.exists()


def install_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike, *, kind: str = "",
                discard: Callable[[Path], object] = _remove_tree) -> None:
    """Move the finished ``tmp_dir`` to ``final_dir`` so that readers see either the old or the new folder.

    Replacing an existing folder is one atomic swap on Linux; elsewhere two renames, and a crash between them leaves
    the old folder as ``.NAME.{kind}old-<writer>`` beside it (removed later by :func:`remove_leftovers`). The
    replaced folder is passed to ``discard`` (default: removed; a save that owns only some files removes those).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    fsync_dir(tmp_dir)
    if final_dir.exists() or final_dir.is_symlink():
        if exchange(tmp_dir, final_dir):
            old = tmp_dir  # now holds the previous folder
        else:
            old = final_dir.with_name(f".{final_dir.name}.{kind}old-{writer_tag()}")
            os.rename(final_dir, old)
            os.rename(tmp_dir, final_dir)
        discard(old)
    else:
        os.rename(tmp_dir, final_dir)
    fsync_dir(final_dir.parent)


def atomic_replace_dir(tmp_dir: str | os.PathLike, final_dir: str | os.PathLike) -> None:
    """:func:`install_dir` for a folder that the caller owns entirely (the old one is removed)."""
    install_dir(tmp_dir, final_dir)


def write_folder_atomically(path: str | os.PathLike, fill: Callable[[Path], None], *,
                            check_target: Callable[[Path], None], remove_dir: Callable[[Path], bool],
                            kind: str = "") -> Path:
    """Save a folder as a whole: ``check_target(path)`` (refuse what the save may not replace), remove the
    leftovers of killed saves, ``fill(tmp)`` a hidden temporary sibling, check again, and swap it in.

    ``remove_dir`` deletes a folder of this kind (only the files such a save writes; True if the folder is gone); it
    discards the replaced folder, the temporary on failure, and the leftovers. ``kind`` names the temporaries
    (``.NAME.{kind}tmp-<writer>``) so two kinds of save in one folder never take each other's leftovers.
    """
    path = Path(os.path.abspath(path))
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path, remove_dir, kind=kind)
    tmp = path.with_name(f".{path.name}.{kind}tmp-{writer_tag()}")
    tmp.mkdir()
    try:
        fill(tmp)
        check_target(path)  # again, just before the swap: the folder may have gained files meanwhile
        install_dir(tmp, path, kind=kind, discard=remove_dir)
    except BaseException:
        if tmp.exists():
            remove_dir(tmp)
        raise
    return path


# -- temporary names and leftovers of killed writers ------------------------------------------------------------------
def _host_tag() -> str:
    """Hash of the host name and, on Linux, the pid namespace: pids are only comparable within one of these."""
    ident = socket.gethostname()
    try:
        ident += f"/pidns:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        pass
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


_HOST_TAG = _host_tag()
_WRITER_TAG = re.compile(r"^(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}$")


def writer_tag() -> str:
    """``<host hash>-<pid>-<random>``: lets a later process tell whether the writer of a temporary is still alive."""
    return f"{_HOST_TAG}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no safe liveness probe (os.kill would terminate the process on Windows): keep it
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, owned by someone else
        return True
    return True


def _last_touched(path: Path) -> float:
    times = [path.lstat().st_mtime]
    if path.is_dir() and not path.is_symlink():
        times += [entry.stat(follow_symlinks=False).st_mtime for entry in os.scandir(path)]
    return max(times)


def writer_gone(path: Path, tag: str) -> bool:
    """True if the process that wrote the temporary ``path`` (named with ``tag``) can no longer be writing it."""
    match = _WRITER_TAG.match(tag)
    if match:  # a writer on another host or in another pid namespace cannot be probed: keep its temporaries
        return match["host"] == _HOST_TAG and not _pid_alive(int(match["pid"]))
    return time.time() - _last_touched(path) > LEGACY_LEFTOVER_AGE_S  # no pid in the name (older hf_corrector)


def remove_leftovers(target: str | os.PathLike, remove_dir: Callable[[Path], bool], kind: str = "") -> list[Path]:
    """Remove the hidden ``.NAME.{kind}tmp-*`` / ``.NAME.{kind}old-*`` folders killed saves of ``target`` left.

    Only leftovers whose writer is gone are touched (see :func:`writer_gone`), and only through ``remove_dir``,
    which deletes the files such a save writes. Returns the folders removed.
    """
    target = Path(os.path.abspath(target))
    prefixes = (f".{target.name}.{kind}tmp-", f".{target.name}.{kind}old-")
    removed: list[Path] = []
    try:
        entries = [e for e in os.scandir(target.parent) if e.name.startswith(prefixes)]
    except OSError:
        return removed
    for entry in entries:
        path = Path(entry.path)
        tag = entry.name[len(prefixes[0]):]  # both prefixes have the same length
        try:
            if entry.is_dir(follow_symlinks=False) and writer_gone(path, tag) and remove_dir(path):
                removed.append(path)
                logger.info("removed %s, left by a killed save of %s", path, target)
        except OSError as err:  # read-only media, a concurrent cleaner: leave it
            logger.debug("could not remove leftover %s (%s)", path, err)
    return removed


def list_names(entries: Sequence[str], limit: int = 5) -> str:
    """``"a, b, c and 4 more"``: folder entries for an error message."""
    entries = sorted(entries)
    shown = ", ".join(entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


__all__ = ["LEGACY_LEFTOVER_AGE_S", "atomic_replace_dir", "exchange", "fsync_dir", "fsync_file", "install_dir",
           "list_names", "remove_leftovers", "sha256_file", "write_bytes_durably", "write_folder_atomically",
           "write_text_atomic", "writer_gone", "writer_tag"]
