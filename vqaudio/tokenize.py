"""Tokenize a corpus at scale, and turn tokens back into audio.

``vqaudio tokenize DIR_OR_FILES --checkpoint CKPT --out OUT`` runs this pipeline:

1. **Files and speakers** from the corpus layout (:func:`discover_files`: VCTK, FSDD names,
   speaker folders, or a list of files).
2. **Decoding** in DataLoader workers: each file is read in blocks with soundfile, downmixed,
   resampled to the model rate with a streaming soxr resampler (the same samples as
   :func:`vqaudio.audio.load_audio`), and cut into **pieces** of at most ``chunk_seconds``
   with ``context`` samples of overlap on each side (:func:`iter_pieces`), so the audio of a
   file is never held whole (what the process keeps still grows with the file: its codes and
   the allocator's retained blocks, see README).
3. **Batched encoding** (:class:`vqaudio.nn.encoder.PaddedEncoder`, which ``VQVAE.encode``
   runs too): pieces, longest first, are packed into rows of one fixed length (short files
   several to a row, one hop apart), so the batch shape stays fixed; what lies outside a
   piece is zeroed before every layer, and the context covers the encoder's receptive field,
   so the latents are ``model.encode``'s on the whole file up to float rounding (other batch
   shapes sum in another order). The codes are equal but where a latent lies almost halfway
   between two codes: the tests check equality on real clips; a session measured 99.76% of
   fp32 codes equal on a trained model (before ``VQVAE.encode`` ran this encoder too).
4. **Shards**: finished files are written to ``OUT/shards/`` in shards (codes + a JSON
   index), each written under a temporary name and renamed; the index is the commit. A
   re-run skips the files already in shards, so a killed run loses at most the shard in
   progress; a file whose size or modification time changed since (:func:`file_stamp`) is
   tokenized again. Unreadable, empty, non-audio or NaN files are recorded as failures, never stop
   the run, and are tried again by the next run.
5. **Merge**: the shards of all processes are merged, sorted by path, into the requested
   format (:mod:`vqaudio.tokens`: ``bin``, ``jsonl``, ``parquet``) with ``metadata.json``,
   ``manifest.tsv`` and ``failures.tsv``. ``OUT/shards`` stays, so that a re-run (more
   files, another ``--format``, ``--offset`` or ``--dedup``) only encodes what is new; it
   may be deleted once the tokens are final (a later run then encodes everything again).

Several processes: ``--num-processes N`` starts N tokenizing processes on this machine (on
CPU the default is one per core, the fastest layout), or a distributed launcher starts them,
one per GPU:
``accelerate launch --multi_gpu --num_processes N -m vqaudio.tokenize ...`` (or
``torchrun --nproc_per_node N -m vqaudio.tokenize ...``, which also works on CPU). Process
``r`` of ``N`` takes files ``r, r + N, ...`` of the sorted list and writes its own shards;
process 0 merges them when all are done. The output does not depend on ``N``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vqaudio._files import atomic_write_bytes, atomic_write_json
from vqaudio._system import available_cores, default_device, retain_freed_memory
from vqaudio.audio import AudioError, find_audio_files, open_audio, to_mono
from vqaudio.config import DECODE_METHODS
from vqaudio.nn.encoder import PRECISIONS, PaddedEncoder
from vqaudio.tokens import (
    FORMATS,
    METADATA_NAME,
    TokenEntry,
    read_metadata,
    read_tokens,
    write_token_dir,
)

if TYPE_CHECKING:
    from vqaudio.model import VQVAE

SHARDS_DIR = "shards"
RUN_NAME = "run.json"
#: Version of the shard layout in ``OUT/shards``.
SHARD_FORMAT_VERSION = 1
_SHARD_NAME = re.compile(r"^r(?P<rank>\d{3})-(?P<seq>\d{6})\.json$")


# ----- files and speakers -----------------------------------------------------------------


@dataclass(frozen=True)
class SourceFile:
    """One audio file to tokenize.

    Attributes:
        path: the file on disk.
        key: the path stored with its tokens: relative to the folder when one folder was
            given, else the path as given. Files are sorted and identified by it.
        speaker: speaker name from the corpus layout, or ``None``.
    """

    path: Path
    key: str
    speaker: str | None


def discover_files(inputs: str | os.PathLike | Sequence[str | os.PathLike]) -> list[SourceFile]:
    """The audio files of ``inputs`` with their speakers, sorted by key.

    One folder is read as a corpus (:func:`vqaudio.data.corpus.discover_corpus`: VCTK 0.80 /
    0.92, FSDD names ``{digit}_{speaker}_{take}.wav``, speaker folders); a folder of another
    layout falls back to all its audio files, with speakers from FSDD names or VCTK-like
    ``{speaker}/{speaker}_*`` paths. Files and several inputs are taken as a list of files.

    Raises:
        FileNotFoundError: an input does not exist.
        ValueError: no audio files found.
    """
    from vqaudio.data.corpus import CorpusError, corpus_from_files, discover_corpus

    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not items:
        raise ValueError("no inputs given")
    if len(items) == 1 and Path(items[0]).is_dir():
        root = Path(items[0])
        try:
            utterances = discover_corpus(root).utterances
        except CorpusError:
            files = find_audio_files(root)
            if not files:
                raise ValueError(f"{root}: no audio files found") from None
            utterances = corpus_from_files(files).utterances
        out = [SourceFile(u.path, u.path.relative_to(root).as_posix(), u.speaker) for u in utterances]
    else:
        files = find_audio_files(items)
        if not files:
            raise ValueError(f"no audio files found in {', '.join(map(str, items))}")
        out = [SourceFile(u.path, str(u.path), u.speaker) for u in corpus_from_files(files).utterances]
    out.sort(key=lambda f: f.key)
    return out


# ----- streaming decode and chunking ------------------------------------------------------


def stream_audio(path: str | os.PathLike, sample_rate: int, block_frames: int = 1 << 16) -> Iterator[np.ndarray]:
    """Decode an audio file in blocks, mono, at ``sample_rate``, in bounded memory.

    The blocks joined are exactly :func:`vqaudio.audio.load_audio` ``(path, sample_rate)``
    (soundfile float32 decoding, channel mean, soxr HQ resampling in streaming mode).

    Yields:
        [n] float32 blocks in [-1, 1] at ``sample_rate`` Hz (n may be 0).

    Raises:
        AudioError: the file is missing, cannot be decoded, holds no samples, or holds NaN/Inf.
    """
    path = Path(path)
    with open_audio(path) as f:
        resampler = None
        if f.samplerate != sample_rate:
            import soxr

            resampler = soxr.ResampleStream(f.samplerate, sample_rate, 1, dtype="float32", quality="HQ")
        total = 0
        while True:
            try:
                data = f.read(block_frames, dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioError(path, f"cannot decode audio ({exc})") from None
            if data.shape[0] == 0:
                break
            if not np.isfinite(data).all():
                raise AudioError(path, "audio holds NaN or Inf values")
            total += data.shape[0]
            mono = to_mono(data)  # as load_audio downmixes
            yield resampler.resample_chunk(mono, last=False) if resampler is not None else mono
        if total == 0:
            raise AudioError(path, "file holds no audio samples")
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)


@dataclass
class Piece:
    """A stretch of one file to encode, with context on both sides.

    Attributes:
        wav: [L] float32 samples at the model rate, L a multiple of ``hop_length``; starts at
            sample ``start`` of the file.
        start: first sample of ``wav`` in the file.
        keep: ``(first, last)`` codes of ``wav`` (in codes from ``wav``'s start) that belong to
            this piece; the rest is context.
        index: number of the piece within its file (0, 1, ...).
        last: the final piece of its file.
        num_samples: samples of the file at the model rate (known on the last piece; on
            others the samples seen so far).
    """

    wav: np.ndarray
    start: int
    keep: tuple[int, int]
    index: int
    last: bool
    num_samples: int


def context_samples(model_hop: int, receptive_field: int) -> int:
    """Overlap on each side of a piece: the receptive field rounded up to whole hops.

    A code whose receptive field lies inside the piece equals the whole-file code (the
    intermediate activations it depends on are then all inside too), so one receptive field
    of context on each side makes the kept codes exact. Defaults: ``ceil(190 / 64) * 64 = 192``.
    """
    return math.ceil(receptive_field / model_hop) * model_hop


def iter_pieces(
    blocks: Iterable[np.ndarray], hop_length: int, chunk_samples: int, context: int
) -> Iterator[Piece]:
    """Cut a stream of samples into pieces of ``chunk_samples`` kept samples plus context.

    Piece ``i`` keeps the codes of samples ``[i * chunk, (i + 1) * chunk)`` and holds the samples
    ``[i * chunk - context, (i + 1) * chunk + context)``, clipped to ``[0, n * hop)`` where
    ``n = T // hop`` is the file's number of codes (trailing samples beyond the last whole hop
    are dropped, as ``VQVAE.encode`` does). At most ``chunk + 2 * context`` samples plus one
    block are held at a time.

    Args:
        blocks: [n] float32 sample blocks (e.g. :func:`stream_audio`).
        hop_length: samples per code (64).
        chunk_samples: kept samples per piece, a positive multiple of ``hop_length``.
        context: samples of overlap on each side, a multiple of ``hop_length``.

    Yields:
        :class:`Piece` objects in order; the final one has ``last=True``.

    Raises:
        ValueError: bad sizes, or a stream shorter than one hop (no code at all).
    """
    if chunk_samples <= 0 or chunk_samples % hop_length or context < 0 or context % hop_length:
        raise ValueError(
            f"chunk_samples ({chunk_samples}) must be a positive and context ({context}) a "
            f"non-negative multiple of hop_length ({hop_length})"
        )
    buf = np.zeros(0, np.float32)
    buf_start = 0  # file position of buf[0]
    received = 0
    index = 0
    for block in blocks:
        if block.size == 0:
            continue
        buf = np.concatenate([buf, block.astype(np.float32, copy=False)])
        received += block.size
        # Piece `index` is final once its right context is inside the file.
        while received >= (index + 1) * chunk_samples + context:
            a, b = index * chunk_samples, (index + 1) * chunk_samples
            lo, hi = max(0, a - context), b + context
            yield Piece(buf[lo - buf_start : hi - buf_start].copy(), lo, ((a - lo) // hop_length, (b - lo) // hop_length),
                        index, False, received)
            index += 1
            drop = max(0, (index * chunk_samples - context) - buf_start)
            buf, buf_start = buf[drop:], buf_start + drop
    end = (received // hop_length) * hop_length
    if end == 0:
        raise ValueError(f"{received} samples are fewer than one hop ({hop_length})")
    while index * chunk_samples < end:
        a, b = index * chunk_samples, min((index + 1) * chunk_samples, end)
        lo, hi = max(0, a - context), min(end, b + context)
        last = b >= end
        yield Piece(buf[lo - buf_start : hi - buf_start].copy(), lo, ((a - lo) // hop_length, (b - lo) // hop_length),
                    index, last, received)
        index += 1


# ----- batched exact encoding --------------------------------------------------------------


def encode_padded(
    model: VQVAE, wav: torch.Tensor, lengths: Sequence[int], precision: str = "fp32"
) -> torch.Tensor:
    """Encode a zero-padded batch of clips of different lengths as if one by one.

    ``PaddedEncoder(model.encoder, model.quantizer, precision)(wav, lengths)``; see
    :class:`vqaudio.nn.encoder.PaddedEncoder`.

    Args:
        model: the VQ-VAE.
        wav: [B, 1, T] float32 in [-1, 1], zero-padded; T a multiple of ``hop_length``.
        lengths: B valid lengths in samples, positive multiples of ``hop_length``, <= T.
        precision: ``"fp32"`` or ``"bf16"``.

    Returns:
        codes: [B, T // hop_length] int64; row b's first ``lengths[b] // hop_length`` codes
        are those of ``model.encode`` on the clip alone (up to float rounding).

    Raises:
        ValueError: bad shapes, lengths or precision.
    """
    return PaddedEncoder(model.encoder, model.quantizer, precision)(wav, lengths)


# ----- the pipeline ----------------------------------------------------------------------------


@dataclass
class TokenizeSummary:
    """What a ``tokenize`` run did.

    Attributes:
        out_dir: the token directory.
        num_files: audio files in the inputs.
        num_skipped: files already tokenized by an earlier run (not done again).
        num_tokenized: files tokenized by this run.
        num_failed: files that could not be tokenized (listed in ``failures.tsv``).
        failures: ``(path, reason)`` of those files.
        audio_seconds: audio tokenized by this run, in seconds.
        wall_seconds: time this run took.
        metadata: ``metadata.json`` written by the merge (empty when not merged).
    """

    out_dir: Path
    num_files: int = 0
    num_skipped: int = 0
    num_tokenized: int = 0
    num_failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Seconds of audio tokenized per second of wall time (the "x real time")."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for people."""
        text = (
            f"{self.num_files} files: {self.num_tokenized} tokenized "
            f"({self.audio_seconds / 3600:.3f} h of audio, {self.real_time_factor:.0f}x real time), "
            f"{self.num_skipped} already done, {self.num_failed} failed"
        )
        return text + (f" (see {self.out_dir / 'failures.tsv'})" if self.num_failed else "")


def tokenize(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    checkpoint: str | os.PathLike | VQVAE,
    out_dir: str | os.PathLike,
    *,
    format: str = "bin",
    offset: int = 0,
    dedup: bool = False,
    batch_size: int = 8,
    num_workers: int = 1,
    num_processes: int | None = 1,
    chunk_seconds: float = 10.0,
    shard_files: int = 256,
    shard_seconds: float = 120.0,
    precision: str = "fp32",
    device: str | None = None,
    num_threads: int | None = None,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    merge: bool = True,
    overwrite: bool = False,
) -> TokenizeSummary:
    """Tokenize every audio file of ``inputs`` into the token directory ``out_dir``.

    Args:
        inputs: a corpus folder, or audio files and folders (see :func:`discover_files`).
        checkpoint: a VQ-VAE checkpoint directory (or bundled name), or a loaded model.
        out_dir: the token directory; an existing one of the same checkpoint is resumed
            (the files it holds are skipped, and counted as such), one of another checkpoint
            or precision is refused, unless ``overwrite``.
        format: ``"bin"``, ``"jsonl"`` or ``"parquet"`` (see :mod:`vqaudio.tokens`).
        offset: N added to every code (token = code + N), to follow a text vocabulary.
        dedup: merge runs of repeated codes, storing the run lengths.
        batch_size: rows encoded at once; a row holds ``chunk_seconds`` of audio plus context:
            one piece of a long file, or several short files packed one hop apart.
        num_workers: DataLoader processes decoding and resampling audio (0: in this process).
        num_processes: tokenizing processes to start on this machine (each with its own shards
            and one torch thread per core it gets); on CPU, the number of cores is the fast
            setting. Needs ``checkpoint`` as a path. ``None``: chosen by
            :func:`auto_num_processes` (what ``vqaudio tokenize`` does by default).
        chunk_seconds: longest piece encoded at once; longer files are cut into pieces with
            overlapping context, so a file's audio is never held whole.
        shard_files, shard_seconds: a shard is committed after this many files or seconds.
        precision: ``"fp32"`` (``model.encode``'s codes up to float rounding, see step 3 of
            the module doc) or ``"bf16"``
            (faster on CPUs with AVX512-BF16 and on GPUs; see :func:`encode_padded`).
        device: ``"cpu"``, ``"cuda"``, ...; default: the GPU of this process if any, else CPU.
        num_threads: torch threads of this process while it encodes (restored afterwards).
            Default on CPU: 1 -- on CPUs shared with other jobs, OpenMP threads that wait for
            each other at every layer are many times slower than one thread (measured:
            ``tools/bench_tokenize.py``); use ``num_processes`` to use more cores.
        progress: show a progress bar (files, hours of audio, x real time).
        rank, world_size: this process's share of the files (set by ``--num-processes`` and
            ``accelerate launch``; default: the launcher's, else 0 of 1).
        merge: merge the shards into the final format when all files are done (process 0).
        overwrite: delete the token directory ``out_dir`` first (only a vqaudio token
            directory is ever deleted) and tokenize every file again. Not with
            ``accelerate launch`` (delete it before launching).

    The encoding process keeps memory it frees for reuse from then on
    (:func:`vqaudio._system.retain_freed_memory`: 103x -> 133x real time for one CPU process).

    Returns:
        :class:`TokenizeSummary`; its ``num_failed`` counts files that could not be read.

    Raises:
        FileExistsError: ``out_dir`` holds something other than vqaudio tokens.
        ValueError: bad options, no audio files, or ``out_dir`` holds tokens of another
            checkpoint or precision.
        vqaudio.model.CheckpointError: the checkpoint cannot be loaded.
        RuntimeError: a worker process failed.
    """
    t0 = time.perf_counter()
    _check_options(format, offset, batch_size, num_workers, num_processes or 1, chunk_seconds, precision)
    out = Path(out_dir)
    files = discover_files(inputs)
    _check_out_dir(out)
    if overwrite and out.is_dir():
        if rank is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"{out}: --overwrite cannot be used by launched processes; delete the folder first")
        shutil.rmtree(out)
    if num_processes is None:
        num_processes = auto_num_processes(len(files), checkpoint, device, rank)

    if num_processes > 1 and rank is None:
        return _spawn(inputs, checkpoint, out, files, t0, format=format, offset=offset, dedup=dedup,
                      batch_size=batch_size, num_workers=num_workers, num_processes=num_processes,
                      chunk_seconds=chunk_seconds, shard_files=shard_files, shard_seconds=shard_seconds,
                      precision=precision, device=device, num_threads=num_threads, progress=progress)

    state = None
    if rank is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState  # launched by accelerate launch / torchrun

        state = PartialState(cpu=device == "cpu")
        rank, world_size = state.process_index, state.num_processes
        device = device or str(state.device)
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    model = _load_model(checkpoint, device)
    run_info = _run_info(model, precision)
    _init_shards(out, run_info)
    done, _ = _read_shards(out / SHARDS_DIR, files)  # a changed input is done again
    mine = [f for f in files[rank::world_size] if f.key not in done]
    summary = TokenizeSummary(out, num_files=len(files), num_skipped=sum(f.key in done for f in files))
    if num_threads is None and model.device.type == "cpu":
        num_threads = 1
    threads_before = torch.get_num_threads()
    try:
        if num_threads:
            torch.set_num_threads(num_threads)
        result = _tokenize_files(
            model, mine, out / SHARDS_DIR, rank, batch_size=batch_size, num_workers=num_workers,
            chunk_seconds=chunk_seconds, shard_files=shard_files, shard_seconds=shard_seconds,
            precision=precision, progress=progress,
        )
    finally:
        torch.set_num_threads(threads_before)
    summary.num_tokenized, summary.audio_seconds = result["num_tokenized"], result["audio_seconds"]
    if state is not None:
        from accelerate.utils import gather_object

        counts = gather_object([(result["num_tokenized"], result["audio_seconds"])])
        summary.num_tokenized = sum(c[0] for c in counts)
        summary.audio_seconds = sum(c[1] for c in counts)
        state.wait_for_everyone()
    if merge and rank == 0:
        meta, failures = merge_shards(out, files, run_info, model.speakers, format=format, offset=offset, dedup=dedup)
        summary.metadata, summary.failures, summary.num_failed = meta, failures, len(failures)
    else:
        summary.failures = result["failures"]
        summary.num_failed = len(result["failures"])
    summary.wall_seconds = time.perf_counter() - t0
    return summary


#: Files per tokenizing process below which ``auto_num_processes`` starts no more: each
#: process pays about 2 s of start-up (imports, model load) before it encodes anything.
FILES_PER_PROCESS = 32


def auto_num_processes(num_files: int, checkpoint: Any = None, device: str | None = None,
                       rank: int | None = None) -> int:
    """The default number of tokenizing processes: one per core this process may use, on CPU.

    One process with one torch thread per core is the fast layout on CPU (processes do not
    wait for each other at every layer as OpenMP threads do; ``tools/bench_tokenize.py``).
    Returns 1 on a GPU (CUDA device given or present), under a distributed launcher
    (``WORLD_SIZE`` > 1 or ``rank`` given), for an already loaded model (processes load the
    checkpoint from its path), and keeps at least :data:`FILES_PER_PROCESS` files per process.
    """
    from vqaudio.model import VQVAE

    if rank is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1 or isinstance(checkpoint, VQVAE):
        return 1
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).split(":")[0] != "cpu":
        return 1
    return max(1, min(available_cores(), num_files // FILES_PER_PROCESS))


def _check_options(format, offset, batch_size, num_workers, num_processes, chunk_seconds, precision) -> None:
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("--format parquet needs pyarrow: pip install 'vqaudio[tokens]'") from None
    if offset < 0:
        raise ValueError(f"--offset must be >= 0, got {offset}")
    if batch_size < 1 or num_workers < 0 or num_processes < 1:
        raise ValueError("--batch-size and --num-processes must be >= 1, --num-workers >= 0")
    if chunk_seconds <= 0:
        raise ValueError(f"--chunk-seconds must be positive, got {chunk_seconds}")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def _check_out_dir(out: Path) -> None:
    """Refuse to write into a folder that holds anything but vqaudio tokens."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if not ((out / SHARDS_DIR).is_dir() or (out / METADATA_NAME).is_file()):
            raise FileExistsError(
                f"{out}: exists and is not a vqaudio token directory; choose another --out"
            )


def _load_model(checkpoint, device: str | None) -> VQVAE:
    from vqaudio.model import VQVAE

    if isinstance(checkpoint, VQVAE):
        return checkpoint.eval()
    return VQVAE.from_pretrained(checkpoint, map_location=default_device(device))


def _run_info(model: VQVAE, precision: str) -> dict[str, Any]:
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


def _init_shards(out: Path, info: dict[str, Any]) -> None:
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


def _read_shards(shards: Path, files: Sequence[SourceFile] | None = None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Committed shards -> (key -> entry with its codes file, key -> failure reason).

    With ``files``, an entry whose recorded :func:`file_stamp` differs from its file's stamp
    now (the input changed since it was tokenized) is left out, so the file counts as not done.
    """
    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    if not shards.is_dir():
        return done, failed
    now = {f.key: file_stamp(f.path) for f in files} if files is not None else {}
    for index_file in sorted(p for p in shards.iterdir() if _SHARD_NAME.match(p.name)):
        index = json.loads(index_file.read_text())
        codes_file = index_file.with_suffix(".codes")
        for e in index["entries"]:
            if "stamp" in e and e["key"] in now and e["stamp"] != now[e["key"]]:
                continue  # made from an older version of the file
            done.setdefault(e["key"], {**e, "codes_file": codes_file, "dtype": index["dtype"]})
        for key, reason in index["failures"]:
            failed[key] = reason
    return done, failed


class _ShardWriter:
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
        self.entries.append({"key": f.key, "stamp": file_stamp(f.path), "speaker": f.speaker,
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


def _tokenize_files(
    model: VQVAE,
    files: list[SourceFile],
    shards: Path,
    rank: int,
    *,
    batch_size: int,
    num_workers: int,
    chunk_seconds: float,
    shard_files: int,
    shard_seconds: float,
    precision: str,
    progress: bool,
) -> dict[str, Any]:
    """Tokenize ``files`` into shards of process ``rank``; returns counts and failures."""
    from tqdm.auto import tqdm

    from vqaudio.nn.encoder import encoder_receptive_field

    sr, hop = model.sample_rate, model.hop_length
    chunk = max(hop, int(round(chunk_seconds * sr / hop)) * hop)
    context = context_samples(hop, encoder_receptive_field(model.config.encoder))
    writer = _ShardWriter(shards, rank, model.config.quantizer.codebook_size, shard_files, shard_seconds)
    result: dict[str, Any] = {"num_tokenized": 0, "audio_seconds": 0.0, "failures": []}
    if not files:
        return result
    retain_freed_memory()  # before the DataLoader forks its workers, so that they inherit it
    encoder = PaddedEncoder(model.encoder, model.quantizer, precision)
    dataset = _PieceDataset(files, sr, hop, chunk, context)
    num_workers = min(num_workers, len(files))
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                        prefetch_factor=4 if num_workers else None,
                        persistent_workers=False)
    row = chunk + 2 * context  # samples per row of a batch (the longest piece)
    pool: list[dict[str, Any]] = []
    pooled = 0  # samples in the pool; packed when it fills two batches
    partial: dict[int, dict[int, np.ndarray]] = {}
    expected: dict[int, tuple[int, int]] = {}  # file -> (number of pieces, num_samples)
    failed: set[int] = set()
    bar = tqdm(total=len(files), unit="file", disable=not progress, position=rank,
               desc=f"tokenize[{rank}]" if rank else "tokenize", dynamic_ncols=True)
    t0 = time.perf_counter()

    def finish(i: int) -> None:
        pieces = partial.pop(i)
        n_pieces, num_samples = expected.pop(i)
        codes = np.concatenate([pieces[k] for k in range(n_pieces)])
        writer.add(files[i], codes, num_samples, sr)
        result["num_tokenized"] += 1
        result["audio_seconds"] += num_samples / sr
        bar.update(1)
        elapsed = time.perf_counter() - t0
        bar.set_postfix_str(f"{result['audio_seconds'] / 3600:.2f} h audio, "
                            f"{result['audio_seconds'] / max(elapsed, 1e-9):.0f}x real time", refresh=False)

    def encode_pool() -> None:
        # First-fit decreasing: pieces (longest first) into rows of `row` samples, one hop
        # apart; batches of `batch_size` rows, so the batch shape hardly ever changes.
        pool.sort(key=lambda p: -p["wav"].shape[0])
        rows: list[list[tuple[dict[str, Any], int]]] = []
        fill: list[int] = []
        for p in pool:
            n = p["wav"].shape[0]
            for r in range(len(rows)):
                if fill[r] + hop + n <= row:
                    rows[r].append((p, fill[r] + hop))
                    fill[r] += hop + n
                    break
            else:
                rows.append([(p, 0)])
                fill.append(n)
        for start in range(0, len(rows), batch_size):
            group = rows[start : start + batch_size]
            wav = torch.zeros(len(group), 1, row)
            for b, members in enumerate(group):
                for p, at in members:
                    wav[b, 0, at : at + p["wav"].shape[0]] = p["wav"]
            segments = [[(at, at + p["wav"].shape[0]) for p, at in members] for members in group]
            codes = encoder.encode_packed(wav, segments).cpu().numpy()
            for b, members in enumerate(group):
                for p, at in members:
                    i = p["file"]
                    if i in failed:
                        continue
                    a, z = p["keep"]
                    partial.setdefault(i, {})[p["index"]] = codes[b, at // hop + a : at // hop + z].copy()
                    if i in expected and len(partial[i]) == expected[i][0]:
                        finish(i)
        pool.clear()

    try:
        for item in loader:
            i = int(item["file"])
            if item.get("error") is not None:
                failed.add(i)
                partial.pop(i, None)
                expected.pop(i, None)
                writer.fail(files[i], str(item["error"]))
                result["failures"].append((files[i].key, str(item["error"])))
                bar.update(1)
                continue
            if item["last"]:
                expected[i] = (int(item["index"]) + 1, int(item["num_samples"]))
            pool.append({"file": i, "index": int(item["index"]), "wav": item["wav"],
                         "keep": (int(item["keep"][0]), int(item["keep"][1]))})
            pooled += item["wav"].shape[0]
            if pooled >= 2 * batch_size * row:
                encode_pool()
                pooled = 0
        encode_pool()
        writer.commit()
    finally:
        bar.close()
    return result


class _PieceDataset(IterableDataset):
    """Iterable dataset of :class:`Piece` dicts (or ``{"file", "error"}``) for DataLoader workers.

    Worker ``w`` of ``W`` decodes files ``w, w + W, ...``.
    """

    def __init__(self, files: list[SourceFile], sample_rate: int, hop: int, chunk: int, context: int):
        self.files, self.sample_rate, self.hop, self.chunk, self.context = files, sample_rate, hop, chunk, context

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        ids = range(len(self.files)) if info is None else range(info.id, len(self.files), info.num_workers)
        for i in ids:
            f = self.files[i]
            try:
                blocks = stream_audio(f.path, self.sample_rate)
                for p in iter_pieces(blocks, self.hop, self.chunk, self.context):
                    yield {"file": i, "index": p.index, "last": p.last, "num_samples": p.num_samples,
                           "wav": torch.from_numpy(p.wav), "keep": p.keep, "error": None}
            except AudioError as exc:
                yield {"file": i, "error": exc.problem}
            except ValueError as exc:  # shorter than one hop
                yield {"file": i, "error": f"too short to tokenize: {exc}"}
            except Exception as exc:  # a decoder crash on one file must not stop the run
                yield {"file": i, "error": f"{type(exc).__name__}: {exc}"}


def merge_shards(
    out: Path,
    files: list[SourceFile],
    run_info: dict[str, Any],
    speakers: list[str],
    *,
    format: str,
    offset: int,
    dedup: bool,
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Merge the shards of all processes into the token directory's final files.

    Entries are sorted by key, so the output depends only on the inputs and the checkpoint,
    not on the number of processes or on interruptions. Files of an earlier export in another
    format are removed.

    Returns:
        ``(metadata, failures)``.

    Raises:
        RuntimeError: some files are in no shard (a process did not finish): run again.
    """
    done, failed = _read_shards(out / SHARDS_DIR, files)
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
    for p in (out / SHARDS_DIR).iterdir():  # leftovers of killed runs
        if p.name.startswith(".") and ".tmp" in p.name:
            p.unlink(missing_ok=True)
    return meta, failures


def _spawn(inputs, checkpoint, out: Path, files: list[SourceFile], t0: float, *, num_processes: int,
           progress: bool, **opts) -> TokenizeSummary:
    """Run ``num_processes`` tokenizing processes on this machine, then merge their shards."""
    from vqaudio.model import VQVAE

    if isinstance(checkpoint, VQVAE):
        raise ValueError("num_processes > 1 needs the checkpoint as a path, not a loaded model")
    model = _load_model(checkpoint, "cpu")
    run_info = _run_info(model, opts["precision"])
    _init_shards(out, run_info)
    threads = opts["num_threads"] or max(1, available_cores() // num_processes)
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    procs, summaries = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(num_processes):
            summary_path = Path(tmp) / f"summary-{r}.json"
            cmd = [sys.executable, "-m", "vqaudio.tokenize", *map(str, items), "--checkpoint", str(checkpoint),
                   "--out", str(out), "--format", opts["format"], "--batch-size", str(opts["batch_size"]),
                   "--num-workers", str(opts["num_workers"]), "--chunk-seconds", str(opts["chunk_seconds"]),
                   "--shard-files", str(opts["shard_files"]), "--shard-seconds", str(opts["shard_seconds"]),
                   "--precision", opts["precision"], "--threads", str(threads),
                   "--rank", str(r), "--world-size", str(num_processes), "--no-merge",
                   "--summary-json", str(summary_path)]
            if opts["device"]:
                cmd += ["--device", opts["device"]]
            if not progress:
                cmd.append("--no-progress")
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WORLD_SIZE": "1"}
            procs.append((subprocess.Popen(cmd, env=env), summary_path))
        codes = [p.wait() for p, _ in procs]
        for _, path in procs:
            if path.is_file():
                summaries.append(json.loads(path.read_text()))
    bad = [r for r, c in enumerate(codes) if c not in (0, 1)]
    if bad:
        raise RuntimeError(f"tokenizing process(es) {bad} failed (exit status {[codes[r] for r in bad]}); "
                           "run the same command again to finish the remaining files")
    summary = TokenizeSummary(out, num_files=len(files))
    summary.num_tokenized = sum(s["num_tokenized"] for s in summaries)
    summary.audio_seconds = sum(s["audio_seconds"] for s in summaries)
    summary.num_skipped = min((s["num_skipped"] for s in summaries), default=0)
    meta, failures = merge_shards(out, files, run_info, model.speakers, format=opts["format"],
                                  offset=opts["offset"], dedup=opts["dedup"])
    summary.metadata, summary.failures, summary.num_failed = meta, failures, len(failures)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


# ----- detokenize --------------------------------------------------------------------------------


def detokenize(
    tokens_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | VQVAE,
    out_dir: str | os.PathLike,
    *,
    speaker: str | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
    overwrite: bool = False,
    allow_other_checkpoint: bool = False,
    method: str = "auto",
    batch_size: int | None = None,
    progress: bool = True,
    device: str | None = None,
) -> list[Path]:
    """Turn a token directory (any format) back into audio with the WaveNet decoder.

    Entries are decoded ``batch_size`` at a time in one generation loop
    (``model.decode_batch``: sample by sample, the fastest available path, each entry for its
    own length) and written to ``out_dir / <its path with suffix .wav>`` as 16-bit WAV at
    the model rate, ``len(codes) * hop_length`` samples long (:func:`output_names`: where two
    entries would share a name, ``x.wav`` and ``x.flac``, the second keeps its suffix,
    ``x.flac.wav``). Existing outputs are kept (the
    run can be resumed) unless ``overwrite``. An entry's audio depends on ``seed`` and the
    entry alone (:func:`vqaudio.model.item_noise` of its path), not on ``batch_size``,
    ``limit`` or which entries an earlier run finished: a resumed run writes what a fresh
    one would.

    Args:
        tokens_dir: written by :func:`tokenize`.
        checkpoint: the VQ-VAE that made the tokens (directory, bundled name, or model).
        out_dir: folder for the WAV files.
        speaker: decode every entry with this speaker; default: each entry's own speaker if
            the checkpoint knows it, else the first speaker of the table.
        temperature, seed: sampling of the decoder.
        limit: decode only the first ``limit`` entries.
        overwrite: replace existing WAV files.
        allow_other_checkpoint: decode tokens made by another checkpoint of the same
            codebook size (normally an error: the codes would mean something else).
        method: decoder implementation, passed to ``model.decode_batch``.
        batch_size: entries decoded together; default on CPU 4 per core (the compiled loop
            shares each weight read among the streams of a thread: ``tools/bench_generate.py``),
            on a GPU 64.
        progress: progress bar (files).
        device: torch device of the model (default: cuda if available, else cpu).

    Returns:
        the WAV files written (existing ones, kept, are not listed; their number is printed to
        stderr).

    Raises:
        vqaudio.tokens.TokenFormatError: not a finished token directory.
        ValueError: the tokens come from another checkpoint, or their rate/codebook differ,
            or ``batch_size`` < 1.
        vqaudio.model.UnknownSpeakerError: ``speaker`` is not in the checkpoint's table.
    """
    from tqdm.auto import tqdm

    from vqaudio.audio import save_audio
    from vqaudio.model import item_noise

    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tokens = read_tokens(tokens_dir)
    meta = tokens.metadata
    model = _load_model(checkpoint, device)
    if meta["codebook_size"] != model.config.quantizer.codebook_size or meta["sample_rate"] != model.sample_rate \
            or meta["hop_length"] != model.hop_length:
        raise ValueError(
            f"{tokens_dir}: tokens of a model with K={meta['codebook_size']} at {meta['sample_rate']} Hz, "
            f"hop {meta['hop_length']}; the checkpoint has K={model.config.quantizer.codebook_size} at "
            f"{model.sample_rate} Hz, hop {model.hop_length}"
        )
    if meta["checkpoint_id"] != model.checkpoint_id and not allow_other_checkpoint:
        raise ValueError(
            f"{tokens_dir}: tokens of checkpoint {meta['checkpoint_id']}, but the checkpoint given is "
            f"{model.checkpoint_id}; pass the checkpoint that made them (or --allow-other-checkpoint)"
        )
    fixed = model.speaker_id(speaker) if speaker is not None else None
    entries = tokens.entries[:limit] if limit is not None else tokens.entries
    out = Path(out_dir)
    written: list[Path] = []
    if batch_size is None:
        batch_size = 4 * available_cores() if model.device.type == "cpu" else 64
    todo: list[tuple[Path, np.ndarray, int, str]] = []
    warned = False
    names = output_names([e.path for e in tokens.entries])  # of all entries: the same names with --limit
    kept = 0
    for e, name in zip(entries, names):
        target = out / name
        if target.exists() and not overwrite:
            kept += 1
            continue
        if fixed is not None:
            sid = fixed
        elif e.speaker is not None and e.speaker in model.speakers:
            sid = model.speaker_id(e.speaker)
        else:
            sid = 0
            if not warned:
                warned = True
                print(f"detokenize: {e.path}: speaker {e.speaker!r} is not in the checkpoint's table; "
                      f"using {model.speakers[0]!r} (pass --speaker to choose)", file=sys.stderr)
        todo.append((target, e.codes, sid, e.path))
    if kept:
        print(f"detokenize: {kept} of the WAV files exist in {out} already and are kept (resumed; "
              f"--overwrite decodes them again)", file=sys.stderr)
    with tqdm(total=len(todo), unit="file", desc="detokenize", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            noise = [item_noise(seed, key, len(c) * model.hop_length, model.device) for _, c, _, key in batch]
            wavs = model.decode_batch([torch.as_tensor(c, dtype=torch.long) for _, c, _, _ in batch],
                                      [sid for _, _, sid, _ in batch], temperature=temperature,
                                      noise=noise, method=method)
            for (target, _, _, _), wav in zip(batch, wavs):
                written.append(save_audio(target, wav[0], model.sample_rate))
            bar.update(len(batch))
    return written


def output_names(paths: Sequence[str]) -> list[Path]:
    """Relative WAV names for token entries' source ``paths``, distinct for distinct paths.

    ``a/x.flac`` -> ``a/x.wav``; where that name is taken by several entries (``x.wav`` and
    ``x.flac``), each entry whose suffix is not ``.wav`` keeps it: ``a/x.flac.wav``.

    Raises:
        ValueError: two entries have the same path (names the path).
    """
    from collections import Counter

    rels = [_safe_relative(p) for p in paths]
    default = [r.with_suffix(".wav") for r in rels]
    taken = Counter(default)
    names = [r.with_name(r.name + ".wav") if taken[d] > 1 and r.suffix.lower() != ".wav" else d
             for r, d in zip(rels, default)]
    seen: dict[Path, str] = {}
    for path, name in zip(paths, names):
        if name in seen:
            raise ValueError(f"token entries {seen[name]!r} and {path!r} would both be decoded to {name}")
        seen[name] = path
    return names


def _safe_relative(path: str) -> Path:
    """A stored path as a relative path that stays inside the output folder."""
    parts = [p for p in Path(path).parts if p not in ("", ".", "..") and p != Path(path).anchor]
    return Path(*parts) if parts else Path("audio")


# ----- CLI glue ---------------------------------------------------------------------------------


def add_tokenize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio tokenize``."""
    parser.add_argument("inputs", nargs="+", metavar="DIR_OR_FILES",
                        help="a corpus folder (VCTK, FSDD, speaker folders) or audio files/folders")
    parser.add_argument("--checkpoint", required=True, help="VQ-VAE checkpoint directory or bundled name")
    parser.add_argument("--out", required=True,
                        help="token directory to write (an existing one of the same checkpoint is resumed: the "
                             "files it holds are skipped)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the token directory --out first and tokenize every file again")
    parser.add_argument("--format", choices=FORMATS, default="bin",
                        help="bin: one flat tokens.bin (uint16; int32 once --offset + K > 65536) "
                        "+ index (nanoGPT/Megatron); jsonl, parquet: data/train.* with an input_ids "
                        "column, loaded by datasets.load_dataset(OUT) (default: bin)")
    parser.add_argument("--offset", type=int, default=0, help="add N to every code id (to follow a text vocabulary); the vocabulary is N + K")
    parser.add_argument("--dedup", action="store_true", help="merge runs of repeated codes, storing run lengths")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows of --chunk-seconds audio encoded at once; short files are packed "
                        "into rows (default: 8)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="DataLoader processes decoding audio (default: 1; 0: none)")
    parser.add_argument("--num-processes", type=int,
                        help="tokenizing processes on this machine, each writing its own shards "
                        "(default on CPU: one per core, at least 32 files each; on GPUs 1, use "
                        "`accelerate launch --multi_gpu --num_processes N -m vqaudio.tokenize ...`)")
    parser.add_argument("--threads", type=int,
                        help="torch threads per process (default on CPU: 1; processes scale better)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0,
                        help="longest stretch encoded at once; longer files are cut with overlap, "
                        "giving the same codes (default: 10)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32: the codes of model.encode (up to float rounding at near-ties); "
                        "bf16: about 2x faster on AVX512-BF16 CPUs and on GPUs, codes near a boundary "
                        "between two codes may differ (default: fp32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: GPU if any)")
    parser.add_argument("--shard-files", type=int, default=256, help="files per shard (default: 256)")
    parser.add_argument("--shard-seconds", type=float, default=120.0,
                        help="commit a shard at least this often, in seconds (default: 120)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    # Set by --num-processes for its worker processes.
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-merge", dest="merge", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--summary-json", help=argparse.SUPPRESS)


def run_tokenize(args: argparse.Namespace) -> int:
    """Run ``vqaudio tokenize``; exit status 0, 1 when some files failed (listed in
    failures.tsv), 2 when a tokenizing process failed (the files left are done by a re-run)."""
    try:
        summary = _run_tokenize(args)
    except RuntimeError as exc:
        print(f"vqaudio tokenize: error: {exc}", file=sys.stderr)
        return 2
    if args.summary_json:
        data = {k: v for k, v in asdict(summary).items() if k not in ("out_dir", "metadata")}
        atomic_write_json(args.summary_json, data, indent=None)
    if args.merge and (args.rank or 0) == 0 and summary.metadata:
        meta = summary.metadata
        layout = (f"tokens.bin of {meta['token_dtype']}" if args.format == "bin"
                  else f"input_ids in {meta['files'][0]}; datasets.load_dataset({str(args.out)!r}) loads it")
        print(f"{summary.describe()}\ntokens: {Path(args.out)} (format {args.format}: {layout}; "
              f"vocabulary {meta['vocab_size']} = offset {meta['offset']} + K {meta['codebook_size']})")
    for path, reason in summary.failures[:10]:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if summary.num_failed else 0


def _run_tokenize(args: argparse.Namespace) -> TokenizeSummary:
    return tokenize(
        args.inputs if len(args.inputs) > 1 else args.inputs[0], args.checkpoint, args.out,
        format=args.format, offset=args.offset, dedup=args.dedup, batch_size=args.batch_size,
        num_workers=args.num_workers, num_processes=args.num_processes, chunk_seconds=args.chunk_seconds,
        shard_files=args.shard_files, shard_seconds=args.shard_seconds, precision=args.precision,
        device=args.device, num_threads=args.threads, progress=args.progress, rank=args.rank,
        world_size=args.world_size, merge=args.merge, overwrite=args.overwrite,
    )


def add_detokenize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio detokenize``."""
    parser.add_argument("tokens_dir", metavar="TOKENS_DIR", help="token directory written by `vqaudio tokenize`")
    parser.add_argument("--checkpoint", required=True, help="the VQ-VAE checkpoint that made the tokens")
    parser.add_argument("--out", required=True, help="folder for the WAV files")
    parser.add_argument("--speaker", help="decode every file with this speaker (default: each file's own)")
    parser.add_argument("--temperature", type=float, default=1.0, help="decoder sampling temperature")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling")
    parser.add_argument("--limit", type=int, help="decode only the first N files")
    parser.add_argument("--method", default="auto", choices=DECODE_METHODS,
                        help="decoder implementation (default auto: the fastest available)")
    parser.add_argument("--batch-size", type=int,
                        help="files decoded together (default: 4 per CPU core, 64 on a GPU)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing WAV files")
    parser.add_argument("--allow-other-checkpoint", action="store_true",
                        help="decode tokens made by another checkpoint with the same codebook size")
    parser.add_argument("--device", help="torch device of the model: cpu, cuda, cuda:1, ... (default: cuda if "
                                         "available, else cpu)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run_detokenize(args: argparse.Namespace) -> int:
    """Run ``vqaudio detokenize``."""
    written = detokenize(args.tokens_dir, args.checkpoint, args.out, speaker=args.speaker,
                         temperature=args.temperature, seed=args.seed, limit=args.limit,
                         overwrite=args.overwrite, allow_other_checkpoint=args.allow_other_checkpoint,
                         method=args.method, batch_size=args.batch_size, progress=args.progress,
                         device=args.device)
    print(f"wrote {len(written)} WAV files to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vqaudio.tokenize`` / ``accelerate launch -m vqaudio.tokenize``: the same as
    ``vqaudio tokenize`` (error messages, exit statuses and process-group shutdown of
    :func:`vqaudio._command.run_command`), without importing the other commands."""
    from vqaudio._command import run_command

    parser = argparse.ArgumentParser(prog="vqaudio tokenize", description=__doc__.split("\n")[0])
    add_tokenize_arguments(parser)
    return run_command("tokenize", run_tokenize, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
