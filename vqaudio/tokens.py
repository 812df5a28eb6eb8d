"""Token directories: the code sequences of a corpus, in formats that language-model trainers read.

A token directory (written by ``vqaudio tokenize``, read by :func:`read_tokens`) holds one entry
per audio file: its path, speaker and duration and its codes ``[T'] int64 in [0, K)``, one code
per ``hop_length`` (64) samples at the model's rate. Every format comes with the same files:

``metadata.json``
    What made the tokens and how to read them: ``format_version``, ``vqaudio_version``,
    ``format``, ``checkpoint_id`` (hash of the VQ-VAE weights), ``sample_rate`` (Hz),
    ``hop_length``, ``codebook_size`` (K), ``codes_per_second`` (Hz), ``speakers`` (the
    checkpoint's speaker table, names in id order), ``offset``, ``dedup``, ``vocab_size``
    (``offset + K``), ``token_dtype``, ``num_files``, ``num_codes``, ``num_tokens``,
    ``total_seconds``, ``precision`` and ``files`` (the data files of the format). It is
    written last: a directory without it is incomplete.
``manifest.tsv``
    ``path  speaker  num_codes  duration`` (tab-separated, a header line, ``-`` for no speaker).
``failures.tsv``
    ``path  reason`` of each file that could not be tokenized (only a header when none).

Formats (``metadata["format"]``):

``"bin"``
    ``tokens.bin``: all tokens, one flat little-endian array of ``metadata["token_dtype"]``:
    ``uint16`` while ``vocab_size = offset + K <= 65536``, ``int32`` above (an ``--offset``
    past ``65536 - K``), files one after another, as nanoGPT's ``train.bin`` -- read it with
    ``np.memmap(path, dtype=metadata["token_dtype"], mode="r")``. ``tokens.idx``: the index in
    Megatron-LM's ``MMapIndexedDataset`` layout (one sequence and one document per file), so
    ``IndexedDataset(".../tokens")`` reads the pair. ``index.jsonl``: one line per file with
    ``offset`` and ``length`` (in tokens, into ``tokens.bin``), ``num_codes``, ``path``,
    ``speaker`` and ``duration`` (seconds). With ``dedup``, ``run_lengths.bin`` (``uint32``)
    holds the run length of each token at the same position.
``"jsonl"``
    ``data/train.jsonl``: one JSON object per line: ``path``, ``speaker``, ``duration``,
    ``input_ids`` (and ``run_lengths`` with ``dedup``).
``"parquet"``
    ``data/train.parquet``: one row per file: ``path``, ``speaker``, ``duration``,
    ``input_ids`` (list of int64) (and ``run_lengths`` with ``dedup``). The schema's
    key-value metadata ``vqaudio`` holds the JSON of what made the tokens (``checkpoint_id``,
    ``sample_rate``, ``hop_length``, ``codebook_size``, ``speakers``, ``offset``, ``dedup``,
    ``vocab_size``, ...), so the file describes itself when it travels alone. Needs
    ``pyarrow`` (``pip install vqaudio[tokens]``).

The jsonl and parquet data sit under ``data/`` with ``train`` in their name, the layout of the
Hugging Face Hub, so that the obvious calls load the codes and nothing else of the directory
(not ``failures.tsv``, nor the ``shards/`` of ``vqaudio tokenize``):
``datasets.load_dataset(OUT)``, ``load_dataset("parquet", data_dir=OUT)`` or
``load_dataset("json", data_dir=OUT)``, each giving one split, ``train``. Directories of format
version 1 (``tokens.jsonl``/``tokens.parquet`` at the top, jsonl with ``codes``) are still read.

Options for text language models: ``offset`` adds N to every code so that code ids follow a
text vocabulary (token = code + N); ``dedup`` merges each run of repeated codes into one token
and stores the run lengths (as the "units" of textless NLP, Lakhotia et al. 2021), so that the
original codes -- and so the audio -- can be rebuilt. :func:`read_tokens` undoes both.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqaudio._files import atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text

#: Version of the token directory layout; bump on incompatible changes.
TOKENS_FORMAT_VERSION = 2
#: Formats of :func:`write_token_dir`.
FORMATS = ("bin", "jsonl", "parquet")

METADATA_NAME = "metadata.json"
MANIFEST_NAME = "manifest.tsv"
FAILURES_NAME = "failures.tsv"
BIN_TOKENS_NAME = "tokens.bin"
BIN_IDX_NAME = "tokens.idx"
BIN_INDEX_NAME = "index.jsonl"
BIN_RUN_LENGTHS_NAME = "run_lengths.bin"
JSONL_NAME = "data/train.jsonl"
PARQUET_NAME = "data/train.parquet"
#: Key of the parquet schema metadata that holds what made the tokens (JSON).
PARQUET_METADATA_KEY = b"vqaudio"

#: Megatron-LM ``MMapIndexedDataset`` index header and dtype codes.
MEGATRON_INDEX_HEADER = b"MMIDIDX\x00\x00"
_MEGATRON_DTYPE_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4}
_PARQUET_ROWS_PER_GROUP = 1024


class TokenFormatError(ValueError):
    """A token directory that is missing, incomplete, corrupt or of a newer format."""


@dataclass(frozen=True)
class TokenEntry:
    """The codes of one audio file.

    Attributes:
        path: the file, relative to the tokenized folder (or as given on the command line).
        speaker: speaker name from the corpus layout, or ``None`` when unknown.
        codes: [T'] int64 raw code ids in [0, K), one per ``hop_length`` samples at the
            model's rate (``--offset`` and ``--dedup`` already undone).
        duration: length of the audio in seconds at the model's rate (``None`` when unknown).
    """

    path: str
    speaker: str | None
    codes: np.ndarray
    duration: float | None = None


@dataclass
class TokenSet:
    """A token directory read back by :func:`read_tokens`.

    Attributes:
        metadata: the contents of ``metadata.json`` (see the module docstring).
        entries: one :class:`TokenEntry` per tokenized file, in the stored order
            (``vqaudio tokenize`` sorts them by path).
    """

    metadata: dict[str, Any]
    entries: list[TokenEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[TokenEntry]:
        return iter(self.entries)

    @property
    def speakers(self) -> list[str]:
        """The checkpoint's speaker table, names in id order."""
        return list(self.metadata["speakers"])


# ----- run-length "dedup" ----------------------------------------------------------------


def dedup_codes(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge runs of repeated codes.

    Args:
        codes: [T'] integer codes.

    Returns:
        ``(units, run_lengths)``: [U] int64 the code of each run, [U] int64 its length
        (>= 1); ``np.repeat(units, run_lengths)`` gives ``codes`` back.

    Example: ``[5, 5, 5, 2, 7, 7] -> ([5, 2, 7], [3, 1, 2])``.
    """
    codes = np.asarray(codes).reshape(-1)
    if codes.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    lengths = np.diff(np.append(starts, codes.size))
    return codes[starts].astype(np.int64), lengths.astype(np.int64)


def undedup_codes(units: np.ndarray, run_lengths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`dedup_codes`: [U] units and [U] run lengths -> [T'] int64 codes.

    Raises:
        TokenFormatError: the arrays differ in length or a run length is < 1.
    """
    units = np.asarray(units).reshape(-1)
    run_lengths = np.asarray(run_lengths).reshape(-1)
    if units.shape != run_lengths.shape:
        raise TokenFormatError(f"{units.size} tokens but {run_lengths.size} run lengths")
    if run_lengths.size and run_lengths.min() < 1:
        raise TokenFormatError("run lengths must be >= 1")
    return np.repeat(units.astype(np.int64), run_lengths.astype(np.int64))


def token_dtype(vocab_size: int) -> np.dtype:
    """Smallest dtype of ``tokens.bin`` for ids in ``[0, vocab_size)``: uint16, else int32."""
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    if vocab_size <= 1 << 31:
        return np.dtype(np.int32)
    raise ValueError(f"vocab_size {vocab_size} does not fit in int32")


# ----- writing ------------------------------------------------------------------------------


def write_token_dir(
    out_dir: str | os.PathLike,
    entries: Iterable[TokenEntry],
    metadata: dict[str, Any],
    format: str = "bin",
    offset: int = 0,
    dedup: bool = False,
    failures: Iterable[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Write a token directory (see the module docstring); entries are streamed, not held.

    Every file is written to a temporary name and renamed; an existing ``metadata.json`` is
    removed first and the new one written last, so a reader never mixes two exports and a
    directory without ``metadata.json`` is known to be incomplete. Data files of an earlier
    export there (those its ``metadata.json`` lists) that the new one does not write are
    removed, so that ``datasets.load_dataset(out_dir)`` never finds two formats.

    Args:
        out_dir: the directory (created if needed).
        entries: codes of each file, [T'] int in [0, K), in the order to store them.
        metadata: at least ``checkpoint_id``, ``sample_rate``, ``hop_length``,
            ``codebook_size``, ``speakers``; more keys are kept. ``format``, ``offset``,
            ``dedup`` and the counts are filled in here.
        format: ``"bin"``, ``"jsonl"`` or ``"parquet"``.
        offset: N added to every code (token = code + N), N >= 0.
        dedup: merge runs of repeated codes, storing their lengths.
        failures: ``(path, reason)`` of files that could not be tokenized.

    Returns:
        the metadata written.

    Raises:
        ValueError: unknown format, negative offset, missing metadata keys, or a code
            outside [0, K).
        ImportError: ``format="parquet"`` without pyarrow.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown token format {format!r}; choose one of {', '.join(FORMATS)}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    missing = {"checkpoint_id", "sample_rate", "hop_length", "codebook_size", "speakers"} - set(metadata)
    if missing:
        raise ValueError(f"metadata lacks {sorted(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous_files = _listed_files(out)
    (out / METADATA_NAME).unlink(missing_ok=True)
    k = int(metadata["codebook_size"])
    vocab_size = k + offset
    dtype = token_dtype(vocab_size)
    stats = _Stats()
    rows = _checked_rows(entries, k, offset, dedup, stats)
    if format == "bin":
        files = _write_bin(out, rows, dtype, dedup)
    elif format == "jsonl":
        files = _write_jsonl(out, rows, dedup)
    else:
        described = {**metadata, "format": format, "codebook_size": k, "offset": int(offset),
                     "dedup": bool(dedup), "vocab_size": vocab_size}
        files = _write_parquet(out, rows, dedup, described)
    atomic_write_text(out / MANIFEST_NAME, "".join(_manifest_lines(stats.manifest)))
    failure_list = list(failures)
    atomic_write_text(
        out / FAILURES_NAME,
        "path\treason\n" + "".join(f"{_tsv(p)}\t{_tsv(r)}\n" for p, r in failure_list),
    )
    meta = {
        "format_version": TOKENS_FORMAT_VERSION,
        "vqaudio_version": _vqaudio_version(),
        **metadata,
        "format": format,
        "codebook_size": k,
        "codes_per_second": float(metadata["sample_rate"]) / int(metadata["hop_length"]),
        "offset": int(offset),
        "dedup": bool(dedup),
        "vocab_size": vocab_size,
        "token_dtype": dtype.name if format == "bin" else "int64",
        "num_files": stats.num_files,
        "num_codes": stats.num_codes,
        "num_tokens": stats.num_tokens,
        "total_seconds": round(stats.seconds, 6),
        "num_failures": len(failure_list),
        "files": files + [MANIFEST_NAME, FAILURES_NAME],
    }
    for name in previous_files - set(meta["files"]):
        (out / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        (out / "data").rmdir()  # left empty by a bin export after a jsonl/parquet one
    atomic_write_json(out / METADATA_NAME, meta)
    return meta


def _listed_files(out: Path) -> set[str]:
    """Data files that an earlier export's ``metadata.json`` in ``out`` lists (empty if none)."""
    try:
        files = json.loads((out / METADATA_NAME).read_text(encoding="utf-8")).get("files", [])
    except (OSError, ValueError, AttributeError):
        return set()
    # only plain relative names of this layout: never a path outside the directory
    return {f for f in files if isinstance(f, str) and ".." not in Path(f).parts and not Path(f).is_absolute()}


@dataclass
class _Stats:
    num_files: int = 0
    num_codes: int = 0
    num_tokens: int = 0
    seconds: float = 0.0
    manifest: list[tuple[str, str | None, int, float | None]] = field(default_factory=list)


@dataclass
class _Row:
    path: str
    speaker: str | None
    duration: float | None
    tokens: np.ndarray  # [U] int64, offset applied
    run_lengths: np.ndarray | None  # [U] int64 with dedup


def _checked_rows(entries: Iterable[TokenEntry], k: int, offset: int, dedup: bool, stats: _Stats) -> Iterator[_Row]:
    for e in entries:
        codes = np.asarray(e.codes).reshape(-1)
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"{e.path}: codes outside [0, {k}) (range {codes.min()}..{codes.max()})")
        run_lengths = None
        if dedup:
            codes, run_lengths = dedup_codes(codes)
        tokens = codes.astype(np.int64) + offset
        n_codes = int(run_lengths.sum()) if run_lengths is not None else int(codes.size)
        stats.num_files += 1
        stats.num_codes += n_codes
        stats.num_tokens += int(tokens.size)
        stats.seconds += float(e.duration or 0.0)
        stats.manifest.append((e.path, e.speaker, n_codes, e.duration))
        yield _Row(e.path, e.speaker, e.duration, tokens, run_lengths)


def _write_bin(out: Path, rows: Iterator[_Row], dtype: np.dtype, dedup: bool) -> list[str]:
    tok_path, rl_path = out / BIN_TOKENS_NAME, out / BIN_RUN_LENGTHS_NAME
    idx_lines: list[str] = []
    lengths: list[int] = []
    position = 0
    with atomic_path(tok_path) as tok_tmp, (atomic_path(rl_path) if dedup else contextlib.nullcontext()) as rl_tmp:
        with open(tok_tmp, "wb") as ftok, (open(rl_tmp, "wb") if dedup else contextlib.nullcontext()) as frl:
            for r in rows:
                ftok.write(r.tokens.astype(dtype.newbyteorder("<")).tobytes())
                if dedup:
                    frl.write(r.run_lengths.astype("<u4").tobytes())
                n_codes = int(r.run_lengths.sum()) if dedup else int(r.tokens.size)
                idx_lines.append(json.dumps({
                    "offset": position, "length": int(r.tokens.size), "num_codes": n_codes,
                    "path": r.path, "speaker": r.speaker, "duration": r.duration,
                }) + "\n")
                lengths.append(int(r.tokens.size))
                position += int(r.tokens.size)
    if not dedup:
        rl_path.unlink(missing_ok=True)
    atomic_write_bytes(out / BIN_IDX_NAME, megatron_index_bytes(lengths, dtype))
    atomic_write_text(out / BIN_INDEX_NAME, "".join(idx_lines))
    return [BIN_TOKENS_NAME, BIN_IDX_NAME, BIN_INDEX_NAME] + ([BIN_RUN_LENGTHS_NAME] if dedup else [])


def megatron_index_bytes(lengths: list[int], dtype: np.dtype) -> bytes:
    """The ``.idx`` file of Megatron-LM's ``MMapIndexedDataset`` for one document per sequence.

    Layout (little-endian): header ``b"MMIDIDX\\x00\\x00"``, version ``<Q`` = 1, dtype code
    ``<B`` (8 = uint16, 4 = int32), sequence count ``<Q``, document count ``<Q`` (sequences
    + 1), sequence lengths ``int32[N]`` (tokens), sequence pointers ``int64[N]`` (byte offsets
    into the ``.bin``), document indices ``int64[N + 1]`` (``0, 1, ..., N``).
    """
    dtype = np.dtype(dtype)
    sizes = np.asarray(lengths, dtype="<i4")
    pointers = np.zeros(len(lengths), dtype="<i8")
    if len(lengths) > 1:
        pointers[1:] = np.cumsum(np.asarray(lengths[:-1], dtype=np.int64)) * dtype.itemsize
    docs = np.arange(len(lengths) + 1, dtype="<i8")
    head = MEGATRON_INDEX_HEADER + struct.pack("<Q", 1) + struct.pack("<B", _MEGATRON_DTYPE_CODES[dtype])
    head += struct.pack("<Q", len(lengths)) + struct.pack("<Q", len(docs))
    return head + sizes.tobytes() + pointers.tobytes() + docs.tobytes()


def read_megatron_index(path: str | os.PathLike) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """Read a Megatron ``.idx`` file -> ``(dtype, lengths [N] int32, byte pointers [N] int64)``.

    Raises:
        TokenFormatError: not a Megatron ``MMapIndexedDataset`` index.
    """
    data = Path(path).read_bytes()
    if not data.startswith(MEGATRON_INDEX_HEADER):
        raise TokenFormatError(f"{path}: not a Megatron MMapIndexedDataset index (bad header)")
    pos = len(MEGATRON_INDEX_HEADER)
    (version,) = struct.unpack_from("<Q", data, pos)
    (code,) = struct.unpack_from("<B", data, pos + 8)
    n, _ndocs = struct.unpack_from("<QQ", data, pos + 9)
    codes = {v: k for k, v in _MEGATRON_DTYPE_CODES.items()}
    if version != 1 or code not in codes:
        raise TokenFormatError(f"{path}: unsupported index version {version} or dtype code {code}")
    pos += 25
    lengths = np.frombuffer(data, dtype="<i4", count=n, offset=pos)
    pointers = np.frombuffer(data, dtype="<i8", count=n, offset=pos + 4 * n)
    return codes[code], lengths, pointers


def _write_jsonl(out: Path, rows: Iterator[_Row], dedup: bool) -> list[str]:
    (out / JSONL_NAME).parent.mkdir(exist_ok=True)
    with atomic_path(out / JSONL_NAME) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            obj: dict[str, Any] = {"path": r.path, "speaker": r.speaker, "duration": r.duration,
                                   "input_ids": r.tokens.tolist()}
            if dedup:
                obj["run_lengths"] = r.run_lengths.tolist()
            f.write(json.dumps(obj, separators=(",", ":")) + "\n")
    return [JSONL_NAME]


def _require_pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(
            "the parquet token format needs pyarrow: pip install 'vqaudio[tokens]'"
        ) from None
    return pa, pq


def _write_parquet(out: Path, rows: Iterator[_Row], dedup: bool, described: dict[str, Any]) -> list[str]:
    pa, pq = _require_pyarrow()
    fields = [
        pa.field("path", pa.string()),
        pa.field("speaker", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("input_ids", pa.list_(pa.int64())),
    ]
    if dedup:
        fields.append(pa.field("run_lengths", pa.list_(pa.int64())))
    schema = pa.schema(fields, metadata={PARQUET_METADATA_KEY: json.dumps(
        {"format_version": TOKENS_FORMAT_VERSION, "vqaudio_version": _vqaudio_version(), **described}
    ).encode()})

    def flush(writer, batch: list[_Row]) -> None:
        cols: dict[str, Any] = {
            "path": [r.path for r in batch],
            "speaker": [r.speaker for r in batch],
            "duration": [r.duration for r in batch],
            "input_ids": [r.tokens for r in batch],
        }
        if dedup:
            cols["run_lengths"] = [r.run_lengths for r in batch]
        writer.write_table(pa.Table.from_pydict(cols, schema=schema))

    (out / PARQUET_NAME).parent.mkdir(exist_ok=True)
    with atomic_path(out / PARQUET_NAME) as tmp, pq.ParquetWriter(str(tmp), schema, compression="zstd") as writer:
        batch: list[_Row] = []
        for r in rows:
            batch.append(r)
            if len(batch) >= _PARQUET_ROWS_PER_GROUP:
                flush(writer, batch)
                batch = []
        if batch:
            flush(writer, batch)
    return [PARQUET_NAME]


def _manifest_lines(manifest: list[tuple[str, str | None, int, float | None]]) -> Iterator[str]:
    yield "path\tspeaker\tnum_codes\tduration\n"
    for path, speaker, n, duration in manifest:
        d = "" if duration is None else f"{duration:.6f}"
        yield f"{_tsv(path)}\t{_tsv(speaker) if speaker is not None else '-'}\t{n}\t{d}\n"


def _tsv(value: str) -> str:
    return str(value).replace("\t", " ").replace("\n", " ")


# ----- reading ------------------------------------------------------------------------------


def read_metadata(tokens_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``metadata.json`` of a token directory.

    Raises:
        TokenFormatError: no such directory, no (or unreadable) ``metadata.json`` (an
            unfinished ``vqaudio tokenize``), or a format newer than this vqaudio reads.
    """
    d = Path(tokens_dir)
    if not d.is_dir():
        raise TokenFormatError(f"{d}: no such token directory")
    path = d / METADATA_NAME
    if not path.is_file():
        raise TokenFormatError(
            f"{d}: no {METADATA_NAME}; not a token directory, or `vqaudio tokenize` has not "
            "finished there (run the same command again to finish it)"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise TokenFormatError(f"{path}: not valid JSON ({exc})") from None
    version = meta.get("format_version")
    if not isinstance(version, int) or version > TOKENS_FORMAT_VERSION:
        raise TokenFormatError(
            f"{path}: token format version {version!r} is not one this vqaudio reads "
            f"(<= {TOKENS_FORMAT_VERSION}); upgrade vqaudio"
        )
    if meta.get("format") not in FORMATS:
        raise TokenFormatError(f"{path}: unknown format {meta.get('format')!r}")
    return meta


def iter_tokens(tokens_dir: str | os.PathLike) -> Iterator[TokenEntry]:
    """Stream the entries of a token directory (see :func:`read_tokens`), one file at a time.

    Raises:
        TokenFormatError: see :func:`read_metadata`; a data file is missing or inconsistent.
        ImportError: a parquet directory without pyarrow.
    """
    d = Path(tokens_dir)
    meta = read_metadata(d)
    offset, dedup, k = int(meta["offset"]), bool(meta["dedup"]), int(meta["codebook_size"])
    for name in meta.get("files", []):
        if not (d / name).is_file():
            raise TokenFormatError(f"{d}: {name} is missing")

    def entry(path: str, speaker: str | None, duration: float | None, tokens, run_lengths) -> TokenEntry:
        codes = np.asarray(tokens, dtype=np.int64) - offset
        if dedup:
            codes = undedup_codes(codes, np.asarray(run_lengths, dtype=np.int64))
        if codes.size and (codes.min() < 0 or codes.max() >= k):
            raise TokenFormatError(f"{d}: codes of {path} fall outside [0, {k}) after removing offset {offset}")
        return TokenEntry(path, speaker, codes, duration)

    fmt = meta["format"]
    if fmt == "bin":
        dtype = np.dtype(meta["token_dtype"]).newbyteorder("<")
        tokens = np.memmap(d / BIN_TOKENS_NAME, dtype=dtype, mode="r") if (d / BIN_TOKENS_NAME).stat().st_size else np.zeros(0, dtype)
        rls = None
        if dedup:
            rl_file = d / BIN_RUN_LENGTHS_NAME
            rls = np.memmap(rl_file, dtype="<u4", mode="r") if rl_file.stat().st_size else np.zeros(0, "<u4")
        with open(d / BIN_INDEX_NAME, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                a, n = int(row["offset"]), int(row["length"])
                if a + n > tokens.size:
                    raise TokenFormatError(f"{d}: index points past the end of {BIN_TOKENS_NAME}")
                yield entry(row["path"], row["speaker"], row["duration"], tokens[a : a + n],
                            rls[a : a + n] if rls is not None else None)
    elif fmt == "jsonl":
        with open(d / _data_file(meta, ".jsonl", JSONL_NAME), encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                ids = row["input_ids"] if "input_ids" in row else row["codes"]  # "codes": version 1
                yield entry(row["path"], row["speaker"], row["duration"], ids, row.get("run_lengths"))
    else:
        _, pq = _require_pyarrow()
        pf = pq.ParquetFile(str(d / _data_file(meta, ".parquet", PARQUET_NAME)))
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group).to_pydict()
            for i in range(len(table["path"])):
                yield entry(table["path"][i], table["speaker"][i], table["duration"][i],
                            table["input_ids"][i], table["run_lengths"][i] if dedup else None)


def _data_file(meta: dict[str, Any], suffix: str, default: str) -> str:
    """The data file of a jsonl/parquet directory: the one ``metadata.json`` lists (its place
    moved between format versions 1 and 2), else today's name."""
    return next((f for f in meta.get("files", []) if str(f).endswith(suffix)), default)


def read_tokens(tokens_dir: str | os.PathLike) -> TokenSet:
    """Read a token directory of any format.

    ``--offset`` and ``--dedup`` are undone: every entry's ``codes`` are the raw code ids
    [T'] int64 in [0, K) that ``VQVAE.encode`` gave, one per ``hop_length`` samples.

    Returns:
        :class:`TokenSet` with ``metadata`` (``metadata.json``) and ``entries`` (in the
        stored order: sorted by path for ``vqaudio tokenize`` output).

    Raises:
        TokenFormatError: not a (finished) token directory, a newer format, or corrupt data.
        ImportError: a parquet directory without pyarrow.
    """
    return TokenSet(read_metadata(tokens_dir), list(iter_tokens(tokens_dir)))


# ----- small helpers --------------------------------------------------------------------------


def _vqaudio_version() -> str:
    from vqaudio import __version__

    return __version__
