"""Classic low-bitrate codecs, run through the same scoring as vqaudio.

Each baseline maps a clip to its decoded version at the same rate: ``wav [T] float32 at
sample_rate Hz -> [T'] float32 at sample_rate Hz`` (T' may differ from T by padding to whole
frames; the codec's delay is kept and removed later by
:func:`vqaudio.evaluate.metrics.estimate_delay`).

- :class:`OriginalAudio`: the input itself, the ceiling of every score (bitrate: 16-bit PCM).
- :class:`Codec2`: Codec 2 (D. Rowe) at 700C / 1200 / 3200 bit/s via ``pycodec2``; 8 kHz
  only, so other rates are resampled to 8 kHz and back.
- :class:`Opus`: Opus (RFC 6716) at 6 kbit/s via the ``opusenc`` / ``opusdec`` programs of
  opus-tools (``apt-get install opus-tools``), when they are on ``PATH``.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import soundfile as sf

from vqaudio.audio import resample
from vqaudio.evaluate.optional import require, which

#: Baselines evaluated by default, by name (see :func:`make_baseline`).
DEFAULT_BASELINES = ("original", "codec2-3200", "codec2-1200", "codec2-700C", "opus-6k")

#: Codec 2 modes by the name used here -> pycodec2 mode number.
CODEC2_MODES = {"3200": 3200, "2400": 2400, "1600": 1600, "1400": 1400, "1300": 1300, "1200": 1200, "700C": 700}


class BaselineUnavailable(RuntimeError):
    """A baseline cannot run here (its program is not installed); the message says what to install."""


class Baseline(Protocol):
    """What the evaluation needs of a codec."""

    name: str

    def bitrate(self, sample_rate: int) -> float:
        """Bits per second of the coded stream for audio at ``sample_rate`` Hz."""
        ...

    def __call__(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Code and decode ``wav`` [T] float32 at ``sample_rate`` Hz -> [T'] float32 at the same rate."""
        ...


@dataclass(frozen=True)
class OriginalAudio:
    """The reference itself: the ceiling of every metric. Its bitrate is that of 16-bit PCM."""

    name: str = "original"

    def bitrate(self, sample_rate: int) -> float:
        """``16 * sample_rate`` bit/s (16-bit PCM)."""
        return 16.0 * sample_rate

    def __call__(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Returns a copy of ``wav``."""
        return np.array(wav, dtype=np.float32, copy=True)


@dataclass(frozen=True)
class Codec2:
    """Codec 2 (``pycodec2``, libcodec2 1.x) at one of :data:`CODEC2_MODES`.

    Codec 2 works on 8 kHz 16-bit PCM in frames of 160 (3200 bit/s) to 320 samples
    (700C / 1200 bit/s); the clip is zero-padded to whole frames and each frame is encoded and
    decoded in turn (the codec keeps its state across the frames of one clip).

    Raises:
        ValueError: unknown mode.
        MissingExtraError: ``pycodec2`` is not installed (on call).
    """

    mode: str = "1200"

    SAMPLE_RATE = 8000

    def __post_init__(self) -> None:
        if self.mode not in CODEC2_MODES:
            raise ValueError(f"unknown Codec 2 mode {self.mode!r}; choose one of {sorted(CODEC2_MODES)}")

    @property
    def name(self) -> str:
        """``codec2-{mode}``."""
        return f"codec2-{self.mode}"

    def bitrate(self, sample_rate: int) -> float:
        """The mode's bitrate (700 for 700C), whatever the input rate."""
        return float(CODEC2_MODES[self.mode])

    def __call__(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """[T] float32 at ``sample_rate`` -> decoded [T'] float32 at ``sample_rate`` (T' >= T)."""
        pycodec2 = require("pycodec2")
        codec = pycodec2.Codec2(CODEC2_MODES[self.mode])
        n = codec.samples_per_frame()
        x = resample(np.asarray(wav, np.float32), sample_rate, self.SAMPLE_RATE)
        pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
        pcm = np.pad(pcm, (0, -len(pcm) % n))
        # pycodec2's encode/decode handle one frame per call (libcodec2's codec2_encode does).
        out = [codec.decode(codec.encode(np.ascontiguousarray(pcm[i : i + n]))) for i in range(0, len(pcm), n)]
        y = np.concatenate(out).astype(np.float32) / 32768.0 if out else np.zeros(0, np.float32)
        return resample(y, self.SAMPLE_RATE, sample_rate)


@dataclass(frozen=True)
class Opus:
    """Opus at a fixed bitrate through ``opusenc`` / ``opusdec`` (opus-tools), in speech mode.

    ``opusenc --bitrate {kbps} --framesize 20`` then ``opusdec --rate {sample_rate}``;
    opusdec removes the encoder's pre-skip, so the output is aligned with the input.

    Raises:
        BaselineUnavailable: ``opusenc`` or ``opusdec`` is not on ``PATH`` (on call).
        RuntimeError: a program failed (its message is included).
    """

    kbps: float = 6.0

    @property
    def name(self) -> str:
        """``opus-{kbps}k``."""
        return f"opus-{self.kbps:g}k"

    def bitrate(self, sample_rate: int) -> float:
        """``1000 * kbps`` bit/s (the encoder's target; Opus VBR averages close to it)."""
        return 1000.0 * self.kbps

    @staticmethod
    def available() -> bool:
        """Whether ``opusenc`` and ``opusdec`` are on ``PATH``."""
        return which("opusenc") is not None and which("opusdec") is not None

    def __call__(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """[T] float32 at ``sample_rate`` -> decoded [T'] float32 at ``sample_rate``."""
        if not self.available():
            raise BaselineUnavailable(
                f"{self.name} needs the opusenc and opusdec programs (Debian/Ubuntu: apt-get install opus-tools)"
            )
        with tempfile.TemporaryDirectory(prefix="vqaudio-opus-") as tmp:
            src, coded, dst = Path(tmp) / "in.wav", Path(tmp) / "coded.opus", Path(tmp) / "out.wav"
            sf.write(str(src), np.clip(wav, -1.0, 1.0), sample_rate, subtype="PCM_16")
            _run(["opusenc", "--quiet", "--bitrate", f"{self.kbps:g}", "--framesize", "20", str(src), str(coded)])
            _run(["opusdec", "--quiet", "--rate", str(sample_rate), str(coded), str(dst)])
            out, sr = sf.read(str(dst), dtype="float32", always_2d=True)
        out = out.mean(axis=1)
        return resample(out, sr, sample_rate) if sr != sample_rate else out


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:1])} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def make_baseline(name: str) -> Baseline:
    """A baseline by name: ``original``, ``codec2-{3200,2400,1600,1400,1300,1200,700C}``, ``opus-{kbps}k``.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if name == "original":
        return OriginalAudio()
    if name.startswith("codec2-") and name[len("codec2-") :] in CODEC2_MODES:
        return Codec2(name[len("codec2-") :])
    if name.startswith("opus-") and name.endswith("k"):
        try:
            return Opus(float(name[len("opus-") : -1]))
        except ValueError:
            pass
    known = ["original"] + [f"codec2-{m}" for m in CODEC2_MODES] + ["opus-6k (any opus-{kbps}k)"]
    raise ValueError(f"unknown baseline {name!r}; known: {', '.join(known)}")


def baseline_available(baseline: Baseline) -> str | None:
    """None when ``baseline`` can run here, else the reason it cannot (to print and report)."""
    if isinstance(baseline, Opus) and not Opus.available():
        return "opusenc/opusdec not installed (apt-get install opus-tools)"
    if isinstance(baseline, Codec2):
        from vqaudio.evaluate.optional import MissingExtraError

        try:
            require("pycodec2")
        except MissingExtraError as exc:
            return str(exc)
    return None
