"""Audio I/O and DSP as pure functions: load, downmix, resample, mu-law, save.

All waveforms are float32 in [-1, 1]. Reading uses soundfile (WAV, FLAC, OGG/Vorbis, ...),
resampling uses soxr (the library behind librosa's resampling); torchaudio is deliberately not used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vqaudio._files import atomic_path

#: File extensions that :func:`find_audio_files` collects.
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """An audio file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def load_audio(path: str | os.PathLike, sample_rate: int | None = None) -> np.ndarray:
    """Read an audio file as mono float32, resampled to ``sample_rate``.

    Args:
        path: a file soundfile can read (WAV, FLAC, OGG, ...).
        sample_rate: target rate in Hz; ``None`` keeps the file's own rate.

    Returns:
        wav: [T] float32 in [-1, 1] at ``sample_rate`` Hz (channels averaged).

    Raises:
        AudioError: the file is missing, cannot be decoded, holds no samples, or holds
            NaN/Inf values.
    """
    wav, sr = read_audio(path)
    if sample_rate is not None and sr != sample_rate:
        wav = resample(wav, sr, sample_rate)
    return wav


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read an audio file as mono float32 at its own rate.

    Returns:
        (wav, sample_rate): wav [T] float32 in [-1, 1]; sample_rate in Hz.

    Raises:
        AudioError: missing, unreadable, empty, or non-finite audio.
    """
    path = Path(path)
    with open_audio(path) as f:
        try:
            data = f.read(dtype="float32", always_2d=True)
        except Exception as exc:  # a file that opens but fails mid-stream (truncated FLAC...)
            raise AudioError(path, f"cannot decode audio ({exc})") from None
        sr = f.samplerate
    if data.shape[0] == 0:
        raise AudioError(path, "file holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio holds NaN or Inf values")
    return to_mono(data), int(sr)


def open_audio(path: str | os.PathLike) -> sf.SoundFile:
    """Open an audio file for reading (blockwise, for long files) with soundfile.

    Returns:
        an open ``soundfile.SoundFile`` (use it as a context manager).

    Raises:
        AudioError: the file cannot be opened (:func:`check_readable` says why) or decoded.
    """
    path = Path(path)
    check_readable(path)
    try:
        return sf.SoundFile(str(path))
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise AudioError(path, f"cannot decode audio ({exc})") from None


def check_readable(path: str | os.PathLike) -> None:
    """Check that ``path`` is a regular file this process may read, before anything opens it
    (opening a FIFO would block).

    Raises:
        AudioError: naming the problem: "file not found", "dangling symbolic link (its target
            is missing)", "symbolic link loop", "is a directory, not an audio file", "not a
            regular file (a FIFO, socket or device)", "permission denied", or the system's
            reason for another failure.
    """
    import errno
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise AudioError(path, "dangling symbolic link (its target is missing)" if os.path.islink(path)
                         else "file not found") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AudioError(path, "symbolic link loop") from None
        if exc.errno == errno.EACCES:
            raise AudioError(path, "permission denied") from None
        raise AudioError(path, f"cannot access the file ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        raise AudioError(path, "is a directory, not an audio file")
    if not stat.S_ISREG(mode):
        raise AudioError(path, "not a regular file (a FIFO, socket or device)")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")


def is_audio_name(path: Path) -> bool:
    """Whether directory listings take ``path`` as an audio file: an :data:`AUDIO_EXTENSIONS`
    suffix (any case) and not hidden, whatever it is on disk, so that a dangling link, a link
    loop, a folder named ``x.wav`` or a FIFO is listed, and reported when it is read, instead
    of being left out silently."""
    return path.suffix.lower() in AUDIO_EXTENSIONS and not path.name.startswith(".")


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average channels: ``data`` [T, C] or [T] -> [T] float32."""
    if data.ndim == 1:
        return data.astype(np.float32, copy=False)
    return data.mean(axis=1, dtype=np.float32)


def resample(wav: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample ``wav`` [T] float32 from ``orig_sr`` to ``target_sr`` Hz with soxr (HQ).

    soxr is the resampler behind librosa's ``res_type="soxr_hq"``; calling it directly avoids
    librosa's first-call cost (seconds) in every process and DataLoader worker.

    Returns [round(T * target_sr / orig_sr)] float32.
    """
    if orig_sr == target_sr:
        return wav
    import soxr

    return soxr.resample(wav, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def save_audio(path: str | os.PathLike, wav: np.ndarray | torch.Tensor, sample_rate: int) -> Path:
    """Write ``wav`` ([T] or [1, T] float in [-1, 1]) as 16-bit PCM WAV, atomically.

    The file is written under a temporary name in the same folder and renamed, so a
    reader never sees a half-written file. Values outside [-1, 1] are clipped.

    Returns the path written.
    """
    path = Path(path)
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().float().cpu().numpy()
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), wav, sample_rate, subtype="PCM_16", format="WAV")
    return path


def find_audio_files(inputs: str | os.PathLike | list[str | os.PathLike]) -> list[Path]:
    """Expand files and directories into a sorted list of audio files.

    Directories are searched recursively for names with :data:`AUDIO_EXTENSIONS`
    (case-insensitive, :func:`is_audio_name`: broken links, FIFOs and folders with such names
    included, to be reported when read); explicit files are kept whatever their extension.

    Raises:
        FileNotFoundError: an input does not exist.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if is_audio_name(f)))
        elif p.exists() or p.is_symlink():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return files


def mu_law_encode(wav: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """mu-law companding and quantization (ITU-T G.711; WaveNet, van den Oord et al. 2016, Eq. 2).

    ``f(x) = sign(x) ln(1 + mu |x|) / ln(1 + mu)``, ``mu = quantization_channels - 1``, then
    ``[-1, 1]`` is mapped to the integers ``0 .. mu`` (silence -> ``mu // 2 + 1`` = 128).

    Args:
        wav: any shape, float in [-1, 1] (clipped).

    Returns:
        the same shape, int64 in ``[0, quantization_channels - 1]``.
    """
    mu = quantization_channels - 1
    x = wav.clamp(-1.0, 1.0)
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / torch.log1p(torch.tensor(float(mu)))
    return ((y + 1) / 2 * mu + 0.5).long()


def mu_law_decode(q: torch.Tensor, quantization_channels: int = 256) -> torch.Tensor:
    """Inverse of :func:`mu_law_encode`: ints ``0 .. mu`` -> float32 in [-1, 1], same shape."""
    mu = quantization_channels - 1
    y = 2 * q.float() / mu - 1
    return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu


def pre_emphasis(wav: torch.Tensor, coefficient: float) -> torch.Tensor:
    """First-order pre-emphasis ``y_t = x_t - a x_{t-1}`` along the last axis (``x_{-1} = 0``).

    LPCNet (Valin & Skoglund 2019, Sec. 3.2) pre-emphasises before its 8-bit mu-law so that the
    quantization noise, white in ``y``, comes out of :func:`de_emphasis` shaped like the speech
    spectrum (low-pass) instead of flat across the band.

    Args:
        wav: [..., T] float in [-1, 1].
        coefficient: ``a`` in [0, 1); 0 returns ``wav`` unchanged.

    Returns:
        [..., T] float, same dtype; not clipped (``|y| <= 1 + a``).
    """
    if coefficient == 0:
        return wav
    past = torch.nn.functional.pad(wav[..., :-1], (1, 0))
    return wav - coefficient * past


def de_emphasis(wav: torch.Tensor, coefficient: float) -> torch.Tensor:
    """Inverse of :func:`pre_emphasis`: the IIR filter ``x_t = y_t + a x_{t-1}`` along the last
    axis (``x_{-1} = 0``), run by ``scipy.signal.lfilter`` in float64 on the CPU.

    Args:
        wav: [..., T] float, on any device.
        coefficient: ``a`` in [0, 1); 0 returns ``wav`` unchanged.

    Returns:
        [..., T] float32 on ``wav``'s device, not clipped: its gain is ``1 / (1 - a)`` at 0 Hz.
    """
    if coefficient == 0:
        return wav
    from scipy.signal import lfilter

    y = lfilter([1.0], [1.0, -coefficient], wav.detach().double().cpu().numpy(), axis=-1)
    return torch.from_numpy(y.astype(np.float32)).to(wav.device)
