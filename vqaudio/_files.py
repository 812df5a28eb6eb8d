"""Writing files atomically: a reader (or a resumed run) never sees half of one.

Every writer in vqaudio goes through :func:`atomic_path`: the file is written under a hidden
temporary name in its destination folder and renamed onto the final name only once complete
(``os.replace``, atomic on POSIX and Windows); on an error the temporary file is removed and
whatever was at the final name stays as it was.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends
    without an error, remove it otherwise.

    The folder is created if needed. The temporary name (``.NAME.tmpPID-RANDOM``) is unique
    per process and call, so concurrent writers never share one; the file gets the usual
    permissions (umask), unlike ``tempfile.mkstemp``'s owner-only ones.

    Raises:
        OSError: the folder cannot be created or the rename fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}-{secrets.token_hex(4)}")
    try:
        yield tmp
        os.replace(tmp, path)
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
