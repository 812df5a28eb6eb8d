"""Audio files in, pieces of audio out: the reading side of ``vqaudio tokenize``.

Steps 1-3 of the pipeline of :mod:`vqaudio.tokenize`: which files a corpus holds and their
speakers (:func:`discover_files`), streaming decode and resampling in blocks
(:func:`stream_audio`), pieces of at most ``chunk_seconds`` with encoder context on both sides
(:func:`iter_pieces`, :func:`context_samples`), and the batched encoding of zero-padded pieces
as if one by one (:func:`encode_padded`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vqaudio.audio import AudioError, find_audio_files, open_audio, to_mono
from vqaudio.nn.encoder import PaddedEncoder

if TYPE_CHECKING:
    from vqaudio.model import VQVAE


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
