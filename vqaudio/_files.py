"""Writing files atomically: a reader (or a resumed run) never sees half of one.

Every writer in vqaudio goes through :func:`atomic_path`: the file is written under a hidden
temporary name in its destination folder and renamed onto the final name only once complete
(``os.replace``, atomic on POSIX and Windows); on an error the temporary file is removed and
whatever was at the final name stays as it was. A full disk, an exceeded quota or a read-only
file system is reported as a :class:`DiskFullError` naming the file system and the file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


#: errno values that mean "the file system cannot take this write".
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class DiskFullError(OSError):
    """A write that failed because its file system is full, over quota, or read-only; the
    message names the file system (its mount point) and the file."""

    def __str__(self) -> str:
        return str(self.strerror)


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds ``path`` (or would hold it)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def disk_error(code: int, path: str | os.PathLike) -> DiskFullError:
    """The :class:`DiskFullError` of errno ``code`` (one of :data:`DISK_ERRNOS`) for ``path``."""
    where = mount_point(path)
    text = {errno.ENOSPC: f"no space left on {where} while writing {path}",
            errno.EDQUOT: f"disk quota exceeded on {where} while writing {path}",
            errno.EROFS: f"{where} is a read-only file system: cannot write {path}"}[code]
    return DiskFullError(code, text, str(path))


def out_of_space(path: str | os.PathLike, margin: int = 1 << 16) -> bool:
    """Whether the file system of ``path`` has less than ``margin`` bytes left for this user
    (how a writer that reports only "System error", such as libsndfile, is told to be full)."""
    try:
        st = os.statvfs(mount_point(path))
    except (OSError, AttributeError):
        return False
    return st.f_bavail * st.f_frsize < margin


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends
    without an error, remove it otherwise.

    The folder is created if needed. The temporary name (``.NAME.tmpPID-RANDOM``) is unique
    per process and call, so concurrent writers never share one; the file gets the usual
    permissions (umask), unlike ``tempfile.mkstemp``'s owner-only ones.

    Raises:
        DiskFullError: the file system is full, over quota or read-only (an ``OSError`` with
            one of :data:`DISK_ERRNOS`, or any error of the writer while the file system has
            no space left); the temporary file is removed.
        OSError: the folder cannot be created or the rename fails.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise disk_error(exc.errno, path) from None
        raise
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
    except DiskFullError:
        raise
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            raise disk_error(exc.errno, path) from None
        raise
    except Exception:
        if out_of_space(path):
            raise disk_error(errno.ENOSPC, path) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (:func:`atomic_path`); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON (``indent``, a final newline) to ``path`` atomically; returns the path.

    Raises:
        TypeError: ``obj`` is not JSON-serializable (nothing is written).
    """
    return atomic_write_text(path, json.dumps(obj, indent=indent) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
