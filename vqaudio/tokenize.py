"""Tokenize a corpus at scale (and back to audio: :mod:`vqaudio.detokenize`).

``vqaudio tokenize DIR_OR_FILES --checkpoint CKPT --out OUT`` runs this pipeline:

1. **Files and speakers** from the corpus layout (:func:`vqaudio.streaming.discover_files`:
   VCTK, FSDD names, speaker folders, or a list of files).
2. **Decoding** in DataLoader workers: each file is read in blocks with soundfile, downmixed,
   resampled to the model rate with a streaming soxr resampler (the same samples as
   :func:`vqaudio.audio.load_audio`), and cut into **pieces** of at most ``chunk_seconds``
   with ``context`` samples of overlap on each side (:func:`vqaudio.streaming.iter_pieces`),
   so the audio of a file is never held whole (what the process keeps still grows with the
   file: its codes and the allocator's retained blocks, see README).
3. **Batched encoding** (:class:`vqaudio.nn.encoder.PaddedEncoder`, which ``VQVAE.encode``
   runs too): pieces, longest first, are packed into rows of one fixed length (short files
   several to a row, one hop apart), so the batch shape stays fixed; what lies outside a
   piece is zeroed before every layer, and the context covers the encoder's receptive field,
   so the latents are ``model.encode``'s on the whole file up to float rounding (other batch
   shapes sum in another order). The codes are equal but where a latent lies almost halfway
   between two codes: the tests check equality on real clips; a session measured 99.76% of
   fp32 codes equal on a trained model (before ``VQVAE.encode`` ran this encoder too).
4. **Shards** (:mod:`vqaudio.shards`): finished files are written to ``OUT/shards/`` in
   shards (codes + a JSON index), each written under a temporary name and renamed; the index
   is the commit. A re-run skips the files already in shards, so a killed run loses at most
   the shard in progress; a file whose size or modification time changed since
   (:func:`vqaudio.shards.file_stamp`) is tokenized again, and with ``--verify`` one whose
   content changed (SHA-256) even where both stayed the same. Unreadable, empty, non-audio or NaN
   files are recorded as failures, never stop the run, and are tried again by the next run.
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

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vqaudio._system import available_cores, default_device, retain_freed_memory
from vqaudio.audio import AudioError
from vqaudio.nn.encoder import PRECISIONS, PaddedEncoder
from vqaudio.shards import SHARDS_DIR, ShardWriter, check_out_dir, init_shards, merge_shards, read_shards, shard_run_info
from vqaudio.streaming import SourceFile, context_samples, discover_files, iter_pieces, stream_audio
from vqaudio.tokens import FORMATS

if TYPE_CHECKING:
    from vqaudio.model import VQVAE


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
    verify: bool = False,
) -> TokenizeSummary:
    """Tokenize every audio file of ``inputs`` into the token directory ``out_dir``.

    Args:
        inputs: a corpus folder, or audio files and folders (see :func:`vqaudio.streaming.discover_files`).
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
            (faster on CPUs with AVX512-BF16 and on GPUs; see :func:`vqaudio.streaming.encode_padded`).
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
        verify: when resuming, skip a file already tokenized only if its content is unchanged
            too (the SHA-256 recorded with its codes), not just its size and modification time
            (the default check, which misses an edit that keeps both). Reads every input once
            more.

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
    if shard_files < 1 or not shard_seconds > 0:
        raise ValueError(f"--shard-files must be >= 1 and --shard-seconds positive, got {shard_files} and {shard_seconds}")
    out = Path(out_dir)
    files = discover_files(inputs)
    check_out_dir(out)
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
                      precision=precision, device=device, num_threads=num_threads, progress=progress,
                      verify=verify)

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
    run_info = shard_run_info(model, precision)
    init_shards(out, run_info)
    done, _ = read_shards(out / SHARDS_DIR, files, verify)  # a changed input is done again
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
        meta, failures = merge_shards(out, files, run_info, model.speakers, format=format, offset=offset, dedup=dedup,
                                      verify=verify)
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


def _load_model(checkpoint, device: str | None) -> VQVAE:
    from vqaudio.model import VQVAE

    if isinstance(checkpoint, VQVAE):
        return checkpoint.eval()
    return VQVAE.from_pretrained(checkpoint, map_location=default_device(device))


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
    writer = ShardWriter(shards, rank, model.config.quantizer.codebook_size, shard_files, shard_seconds)
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
    """Iterable dataset of :class:`vqaudio.streaming.Piece` dicts (or ``{"file", "error"}``) for DataLoader workers.

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


def _spawn(inputs, checkpoint, out: Path, files: list[SourceFile], t0: float, *, num_processes: int,
           progress: bool, **opts) -> TokenizeSummary:
    """Run ``num_processes`` tokenizing processes on this machine, then merge their shards."""
    from vqaudio.model import VQVAE

    if isinstance(checkpoint, VQVAE):
        raise ValueError("num_processes > 1 needs the checkpoint as a path, not a loaded model")
    model = _load_model(checkpoint, "cpu")
    run_info = shard_run_info(model, opts["precision"])
    init_shards(out, run_info)
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
            if opts["verify"]:
                cmd.append("--verify")
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
                                  offset=opts["offset"], dedup=opts["dedup"], verify=opts["verify"])
    summary.metadata, summary.failures, summary.num_failed = meta, failures, len(failures)
    summary.wall_seconds = time.perf_counter() - t0
    return summary


if __name__ == "__main__":  # the tokenizing processes of --num-processes, accelerate launch, torchrun
    from vqaudio.tokenize_cli import main

    sys.exit(main())
