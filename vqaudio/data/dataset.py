"""Training and validation data: fixed-length audio segments with their speaker id.

A :class:`SegmentDataset` item is ``{"wav": [1, segment_length] float32 in [-1, 1],
"speaker": int64 scalar}``; the default ``DataLoader`` collate stacks a batch into
``wav: [B, 1, segment_length]`` and ``speaker: [B]``, the input of ``VQVAE.forward``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vqaudio.audio import load_audio
from vqaudio.data.corpus import Corpus, Utterance

_INT16_SCALE = 32768.0


def iter_audio(
    utterances: Iterable[Utterance],
    sample_rate: int,
    *,
    num_threads: int = 1,
    progress: bool = False,
    desc: str = "loading audio",
) -> Iterator[tuple[Utterance, np.ndarray]]:
    """Load whole utterances, in order, for tokenizing, evaluation or preloading.

    Args:
        utterances: the recordings (a :class:`Corpus` works too).
        sample_rate: rate in Hz to resample to (soxr, see :func:`vqaudio.audio.load_audio`).
        num_threads: files decoded and resampled at once in background threads (soundfile
            and soxr release the GIL); at most ``2 * num_threads`` loaded files wait in memory.
        progress: show a tqdm progress bar.

    Yields:
        ``(utterance, wav)``, wav: [T] float32 in [-1, 1] at ``sample_rate`` Hz, mono.

    Raises:
        AudioError: a file is missing or cannot be decoded (the message names the file).
    """
    if isinstance(utterances, Corpus):
        utterances = utterances.utterances
    utterances = list(utterances)
    bar = tqdm(total=len(utterances), desc=desc, unit="file", disable=not progress)
    try:
        if num_threads <= 1:
            for u in utterances:
                yield u, load_audio(u.path, sample_rate)
                bar.update(1)
            return
        with ThreadPoolExecutor(num_threads) as pool:
            pending: collections.deque = collections.deque()
            todo = iter(utterances)
            for u in todo:
                pending.append((u, pool.submit(load_audio, u.path, sample_rate)))
                if len(pending) >= 2 * num_threads:
                    break
            while pending:
                u, future = pending.popleft()
                wav = future.result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append((nxt, pool.submit(load_audio, nxt.path, sample_rate)))
                yield u, wav
                bar.update(1)
    finally:
        bar.close()


class SegmentDataset(Dataset):
    """Fixed-length segments of utterances with their speaker id (the VQ-VAE's training data).

    Item ``i`` comes from ``utterances[i]``:
    ``{"wav": FloatTensor [1, segment_length] in [-1, 1] at sample_rate Hz, "speaker": LongTensor []}``.

    Segments:
        ``random_offsets=True`` (training): a segment starts at a uniformly random sample
        ``0 .. T - segment_length``. ``random_offsets=False`` (validation): the centred
        segment ``(T - segment_length) // 2``, the same on every call, so validation losses
        of different checkpoints are comparable. A clip shorter than ``segment_length`` is
        taken whole and zero-padded at the end.

    Random offsets:
        a pure function of ``(seed, epoch, index)``: item ``index`` draws its offset from
        ``numpy.random.default_rng([seed, epoch, index])``. Call :meth:`set_epoch` at the start
        of every epoch (the training loop does) to get new crops; the same epoch always gives
        the same crops, in any process or DataLoader worker, so a resumed run sees exactly the
        crops of an uninterrupted one.

    Memory:
        with ``preload=True`` all audio is decoded and resampled once in ``__init__`` (with a
        progress bar) and kept as int16 (2 bytes a sample; 16-bit sources stay exact at their
        own rate), failing fast on a bad file; otherwise each item loads its file when asked,
        in the ``DataLoader`` workers.

    Args:
        utterances: the recordings (a :class:`Corpus` works too); must not be empty.
        speakers: the model's speaker table (id = index); every utterance's speaker must be
            in it. ``None``: no speaker labels, every item's speaker is 0.
        sample_rate: model rate in Hz; audio is resampled to it.
        segment_length: samples per segment, a positive multiple of ``hop_length``.
        hop_length: samples per code (64).
        random_offsets, preload, seed: see above (``seed`` also seeds the offsets).
        num_threads: threads decoding files during the preload.
        progress: show the preload's progress bar.

    Raises:
        ValueError: bad segment length, no utterances, or a speaker missing from the table.
        AudioError: (preload) a file that cannot be loaded, naming it.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance] | Corpus,
        speakers: Sequence[str] | None,
        *,
        sample_rate: int,
        segment_length: int,
        hop_length: int = 64,
        random_offsets: bool = True,
        preload: bool = True,
        seed: int = 0,
        num_threads: int = 1,
        progress: bool = True,
    ) -> None:
        if isinstance(utterances, Corpus):
            utterances = utterances.utterances
        self.utterances: tuple[Utterance, ...] = tuple(utterances)
        if not self.utterances:
            raise ValueError("SegmentDataset needs at least one utterance, got none")
        if hop_length <= 0 or segment_length <= 0 or segment_length % hop_length != 0:
            raise ValueError(
                f"segment_length must be a positive multiple of hop_length ({hop_length}), "
                f"got {segment_length}"
            )
        self.sample_rate = sample_rate
        self.segment_length = segment_length
        self.hop_length = hop_length
        self.random_offsets = random_offsets
        self.seed = seed
        self.speaker_ids = _speaker_ids(self.utterances, speakers)
        self._audio: list[np.ndarray] | None = None
        if preload:
            desc = f"loading {len(self.utterances)} files at {sample_rate} Hz"
            self._audio = [
                _to_int16(wav)
                for _, wav in iter_audio(
                    self.utterances, sample_rate, num_threads=num_threads, progress=progress, desc=desc
                )
            ]
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the random offsets of ``epoch`` (a non-negative int) from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self._audio is not None:
            wav = self._audio[index].astype(np.float32) / _INT16_SCALE
        else:
            wav = load_audio(self.utterances[index].path, self.sample_rate)
        return {
            "wav": torch.from_numpy(self._segment(wav, index)).unsqueeze(0),
            "speaker": torch.tensor(self.speaker_ids[index], dtype=torch.long),
        }

    @property
    def lengths(self) -> list[int] | None:
        """Samples of each preloaded utterance at ``sample_rate`` (``None`` when not preloaded)."""
        return None if self._audio is None else [len(a) for a in self._audio]

    @property
    def num_samples(self) -> int | None:
        """Total preloaded samples at ``sample_rate`` (``None`` when not preloaded)."""
        return None if self._audio is None else sum(len(a) for a in self._audio)

    def _segment(self, wav: np.ndarray, index: int) -> np.ndarray:
        """[T] float32 -> [segment_length] float32: random or centred crop, or end-padded."""
        length = self.segment_length
        if len(wav) <= length:
            return np.pad(wav, (0, length - len(wav))).astype(np.float32, copy=False)
        if self.random_offsets:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            start = int(rng.integers(0, len(wav) - length + 1))
        else:
            start = (len(wav) - length) // 2
        return np.ascontiguousarray(wav[start : start + length], dtype=np.float32)


def _speaker_ids(utterances: Sequence[Utterance], speakers: Sequence[str] | None) -> list[int]:
    if speakers is None:
        return [0] * len(utterances)
    table = {name: i for i, name in enumerate(speakers)}
    ids = []
    for u in utterances:
        if u.speaker not in table:
            known = ", ".join(list(speakers)[:20]) + (" ..." if len(speakers) > 20 else "")
            raise ValueError(
                f"{u.path}: speaker {u.speaker!r} is not in the speaker table ({known}); "
                "pass the table of the whole corpus (speaker_table) or speakers=None"
            )
        ids.append(table[u.speaker])
    return ids


def _to_int16(wav: np.ndarray) -> np.ndarray:
    """[T] float32 in [-1, 1] -> [T] int16 (``round(x * 32768)``, clipped)."""
    return np.clip(np.round(wav * _INT16_SCALE), -32768, 32767).astype(np.int16)
