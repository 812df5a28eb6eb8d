"""The tokenizer's shards: what ``vqaudio tokenize`` has finished, on disk, and their merge.

Steps 4-5 of the pipeline of :mod:`vqaudio.tokenize`. Finished files are committed to
``OUT/shards/`` in shards ``r{rank}-{seq}.codes`` + ``.json`` (codes and their index, each
written under a temporary name and renamed; the index is the commit), beside ``run.json``
(what the codes depend on: checkpoint, rates, precision). A re-run reads the committed shards
(:func:`read_shards`) and skips the files in them whose size and modification time
(:func:`file_stamp`) are unchanged, and with ``verify`` also their content (the SHA-256 each
entry records). :func:`merge_shards` writes the final token directory
(:mod:`vqaudio.tokens`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqaudio._files import atomic_write_bytes, atomic_write_json, file_sha256
from vqaudio.tokens import METADATA_NAME, TokenEntry, read_metadata, write_token_dir

if TYPE_CHECKING:
    from vqaudio.model import VQVAE
    from vqaudio.streaming import SourceFile


SHARDS_DIR = "shards"


RUN_NAME = "run.json"


#: Version of the shard layout in ``OUT/shards``.
SHARD_FORMAT_VERSION = 1


_SHARD_NAME = re.compile(r"^r(?P<rank>\d{3})-(?P<seq>\d{6})\.json$")


def check_out_dir(out: Path) -> None:
    """Refuse to write into a folder that holds anything but vqaudio tokens."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / SHARDS_DIR).is_dir() or (out / METADATA_NAME).is_file()):
            raise FileExistsError(
                f"{out}: exists and is not a vqaudio token directory; choose another --out"
            )


def shard_run_info(model: VQVAE, precision: str) -> dict[str, Any]:
    """What the shards depend on; a resumed run must match it."""
    from vqaudio.nn.encoder import encoder_receptive_field

    return {
        "shard_format_version": SHARD_FORMAT_VERSION,
        "checkpoint_id": model.checkpoint_id,
        "sample_rate": model.sample_rate,
        "hop_length": model.hop_length,
        "codebook_size": model.config.quantizer.codebook_size,
        "encoder_receptive_field": encoder_receptive_field(model.config.encoder),
        "precision": precision,
    }


def init_shards(out: Path, info: dict[str, Any]) -> None:
    """Create ``out/shards/`` with ``run.json`` = ``info`` (:func:`shard_run_info`), or check that
    the shards there are of the same run.

    Raises:
        ValueError: the shards there depend on another checkpoint, rate, codebook or precision.
    """
    shards = out / SHARDS_DIR
    shards.mkdir(parents=True, exist_ok=True)
    run = shards / RUN_NAME
    if run.is_file():
        old = json.loads(run.read_text())
        keys = ("shard_format_version", "checkpoint_id", "sample_rate", "hop_length", "codebook_size", "precision")
        diff = [k for k in keys if old.get(k) != info.get(k)]
        if diff:
            raise ValueError(
                f"{out}: holds tokens of another run ("
                + ", ".join(f"{k} {old.get(k)!r} there, {info.get(k)!r} now" for k in diff)
                + "); choose another --out"
            )
        return
    atomic_write_json(run, info)


def file_stamp(path: str | os.PathLike) -> list[int]:
    """``[size in bytes, modification time in ns]`` of a file: recorded with its codes, so a
    resumed run tokenizes a file again when it changed (``[-1, -1]`` when it cannot be read)."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def read_shards(shards: Path, files: Sequence[SourceFile] | None = None, verify: bool = False
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Committed shards -> (key -> entry with its codes file, key -> failure reason).

    With ``files``, an entry whose recorded :func:`file_stamp` differs from its file's stamp
    now (the input changed since it was tokenized) is left out, so the file counts as not done;
    with ``verify`` too, an entry whose recorded SHA-256 differs from its file's now (or that
    records none: shards written before hashes were) is left out, which catches an edit that
    kept the size and the modification time. Each file is hashed at most once.
    """
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    if not shards.is_dir():
        return done, failed
    now = {f.key: file_stamp(f.path) for f in files} if files is not None else {}
    paths = {f.key: f.path for f in files} if files is not None else {}
    hashes: dict[str, str | None] = {}

    def content(key: str) -> str | None:
        if key not in hashes:
            try:
                hashes[key] = file_sha256(paths[key])
            except OSError:
                hashes[key] = None
        return hashes[key]

    for index_file in sorted(p for p in shards.iterdir() if _SHARD_NAME.match(p.name)):
        index = json.loads(index_file.read_text())
        codes_file = index_file.with_suffix(".codes")
        for e in index["entries"]:
            if "stamp" in e and e["key"] in now and e["stamp"] != now[e["key"]]:
                continue  # made from an older version of the file
            if verify and e["key"] in paths and e.get("sha256") != content(e["key"]):
                continue  # its content changed (or was not recorded)
            done.setdefault(e["key"], {**e, "codes_file": codes_file, "dtype": index["dtype"]})
        for key, reason in index["failures"]:
            failed[key] = reason
    return done, failed


class ShardWriter:
    """Collects finished files and commits them as shards ``r{rank}-{seq}.codes/.json``."""

    def __init__(self, shards: Path, rank: int, codebook_size: int, max_files: int, max_seconds: float):
        self.shards, self.rank = shards, rank
        self.dtype = np.dtype("<u2") if codebook_size <= 1 << 16 else np.dtype("<i4")
        self.max_files, self.max_seconds = max_files, max_seconds
        pattern = re.compile(rf"^\.?r{rank:03d}-(\d{{6}})\.")
        taken = [int(m.group(1)) for p in shards.iterdir() if (m := pattern.match(p.name))]
        self.seq = max(taken, default=-1) + 1
        self._reset()

    def _reset(self) -> None:
        self.codes: list[np.ndarray] = []
        self.entries: list[dict[str, Any]] = []
        self.failures: list[tuple[str, str]] = []
        self.position = 0
        self.opened = time.monotonic()

    def add(self, f: SourceFile, codes: np.ndarray, num_samples: int, sample_rate: int) -> None:
        self.entries.append({"key": f.key, "stamp": file_stamp(f.path), "sha256": file_sha256(f.path),
                             "speaker": f.speaker,
                             "num_samples": int(num_samples),
                             "duration": num_samples / sample_rate, "offset": self.position,
                             "length": int(codes.size)})
        self.codes.append(codes.astype(self.dtype))
        self.position += int(codes.size)
        self._maybe_commit()

    def fail(self, f: SourceFile, reason: str) -> None:
        self.failures.append((f.key, reason))
        self._maybe_commit()

    def _maybe_commit(self) -> None:
        n = len(self.entries) + len(self.failures)
        if n >= self.max_files or (n and time.monotonic() - self.opened >= self.max_seconds):
            self.commit()

    def commit(self) -> None:
        """Write the shard: codes, then its index (the commit), each to a temp name + rename."""
        if not self.entries and not self.failures:
            return
        name = f"r{self.rank:03d}-{self.seq:06d}"
        codes = np.concatenate(self.codes) if self.codes else np.zeros(0, self.dtype)
        index = {"shard_format_version": SHARD_FORMAT_VERSION, "dtype": self.dtype.str,
                 "entries": self.entries, "failures": self.failures}
        _write_shard(self.shards / f"{name}.codes", codes.tobytes(),
                     self.shards / f"{name}.json", json.dumps(index).encode())
        self.seq += 1
        self._reset()


def _write_shard(codes_path: Path, codes: bytes, index_path: Path, index: bytes) -> None:
    """Commit one shard: the codes file first, the index (which makes it count) last."""
    atomic_write_bytes(codes_path, codes)
    atomic_write_bytes(index_path, index)


def merge_shards(
    out: Path,
    files: list[SourceFile],
    run_info: dict[str, Any],
    speakers: list[str],
    *,
    format: str,
    offset: int,
    dedup: bool,
    verify: bool = False,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Merge the shards of all processes into the token directory's final files.

    Entries are sorted by key, so the output depends only on the inputs and the checkpoint,
    not on the number of processes or on interruptions. Files of an earlier export in another
    format are removed, and so are the leftovers of runs that died (temporary files, and shard
    codes whose index was never written: a full disk between the two).

    ``verify``: entries are checked by content too (:func:`read_shards`).

    Returns:
        ``(metadata, failures)``.

    Raises:
        RuntimeError: some files are in no shard (a process did not finish): run again.
    """
    done, failed = read_shards(out / SHARDS_DIR, files, verify)
    missing = [f.key for f in files if f.key not in done and f.key not in failed]
    if missing:
        raise RuntimeError(
            f"{out}: {len(missing)} files are not tokenized yet (e.g. {missing[0]}); "
            "run the same command again to finish them"
        )
    old_files: list[str] = []
    with contextlib.suppress(Exception):
        old_files = list(read_metadata(out).get("files", []))
    entries = [f for f in files if f.key in done]
    failures = [(f.key, failed[f.key]) for f in files if f.key not in done]
    memmaps: dict[Path, np.ndarray] = {}

    def codes_of(e: dict[str, Any]) -> np.ndarray:
        path = e["codes_file"]
        if path not in memmaps:
            memmaps[path] = np.memmap(path, dtype=np.dtype(e["dtype"]), mode="r") if path.stat().st_size else np.zeros(0)
        return np.asarray(memmaps[path][e["offset"] : e["offset"] + e["length"]], dtype=np.int64)

    def stream() -> Iterator[TokenEntry]:
        for f in entries:
            e = done[f.key]
            yield TokenEntry(f.key, f.speaker, codes_of(e), e["duration"])

    metadata = {
        "checkpoint_id": run_info["checkpoint_id"],
        "sample_rate": run_info["sample_rate"],
        "hop_length": run_info["hop_length"],
        "codebook_size": run_info["codebook_size"],
        "speakers": list(speakers),
        "precision": run_info["precision"],
    }
    meta = write_token_dir(out, stream(), metadata, format=format, offset=offset, dedup=dedup, failures=failures)
    for name in set(old_files) - set(meta["files"]):
        (out / name).unlink(missing_ok=True)
    for p in (out / SHARDS_DIR).iterdir():  # leftovers of killed runs, and codes whose index was never written
        orphan = p.suffix == ".codes" and _SHARD_NAME.match(p.with_suffix(".json").name) and not p.with_suffix(".json").exists()
        if (p.name.startswith(".") and ".tmp" in p.name) or orphan:
            p.unlink(missing_ok=True)
    return meta, failures
