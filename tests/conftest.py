"""Shared test fixtures: the bundled FSDD sample, the shared corpora, small VCTK-like trees."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

REPO_ROOT = Path(__file__).resolve().parents[1]
#: In CI and on the development machines the corpora lie at ``../shared/data`` from the repo.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
FSDD_SAMPLE = REPO_ROOT / "samples" / "fsdd"
_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def tiny_vqvae_config(*, num_speakers: int = 2, sample_rate: int = 8000, codebook_size: int = 16, dim: int = 8,
                      ema: bool = True, encoder_channels: tuple[int, ...] = (4, 4, 8, 8, 8, 8),
                      causal_encoder: bool = False, gain_jitter_db: float = 0.0, **decoder):
    """A VQ-VAE config small enough for a test to train, encode and decode in milliseconds: hop
    64 (six stride-2 layers), K = ``codebook_size`` codes of ``dim``, and a 1 x 3 WaveNet
    (residual 8, gate 16, skip 8, local 8, speaker 4, kernel 2) unless ``decoder`` says otherwise;
    ``causal_encoder`` pads the encoder on the left only, ``gain_jitter_db`` jitters its input's gain."""
    from vqaudio.config import DecoderConfig, EncoderConfig, QuantizerConfig, VQVAEConfig

    sizes = dict(num_stacks=1, layers_per_stack=3, residual_channels=8, gate_channels=16, skip_channels=8,
                 local_channels=8, speaker_channels=4, kernel_size=2)
    sizes.update(decoder)
    return VQVAEConfig(
        sample_rate=sample_rate,
        encoder=EncoderConfig(channels=tuple(encoder_channels), causal=causal_encoder, gain_jitter_db=gain_jitter_db),
        quantizer=QuantizerConfig(codebook_size=codebook_size, dim=dim, ema=ema),
        decoder=DecoderConfig(num_speakers=num_speakers, **sizes),
    )


def tiny_vqvae(speakers: Sequence[str], seed: int = 0, **sizes):
    """A randomly initialised VQ-VAE of :func:`tiny_vqvae_config` (``sizes`` passed on) with
    the speaker table ``speakers``, its weights drawn after ``torch.manual_seed(seed)``; eval mode."""
    import torch

    from vqaudio.model import VQVAE

    config = tiny_vqvae_config(num_speakers=len(speakers), **sizes)
    torch.manual_seed(seed)
    return VQVAE(config, list(speakers)).eval()


def sigterm_when(proc, ready: Callable[[], bool], timeout: float = 120) -> tuple[str, str]:
    """Wait until ``ready()`` (polling every 0.1 s) while the subprocess ``proc`` runs, send it
    SIGTERM, and return its ``(stdout, stderr)``; fails if it ends first or ``timeout`` passes."""
    import signal
    import time

    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=timeout)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run per-sample loops: one torch thread beats two, whose OpenMP workers
    wait for each other at every op (measured 37 ms per step with 2 threads on a loaded
    2-core machine). Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def fsdd_sample_dir() -> Path:
    """``samples/fsdd`` (bundled FSDD takes 0-14; ``recordings/{digit}_{speaker}_{take}.wav``, 8 kHz)."""
    assert (FSDD_SAMPLE / "recordings").is_dir(), f"bundled sample missing: {FSDD_SAMPLE}"
    return FSDD_SAMPLE


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` (full FSDD, VCC 2016); skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vcc_dir(shared_data_dir: Path) -> Path:
    """``../shared/data/vcc2016/train`` ({speaker}/1000NN.flac, 16 kHz); skips when absent."""
    path = shared_data_dir / "vcc2016" / "train"
    if not path.is_dir():
        pytest.skip(f"VCC 2016 not found at {path}")
    return path


def fsdd_clip(digit: int, speaker: str = "jackson", take: int = 5) -> Path:
    """Path of one bundled FSDD clip (takes 0-14 are bundled)."""
    return FSDD_SAMPLE / "recordings" / f"{digit}_{speaker}_{take}.wav"


def write_resampled(src: Path, dst: Path, sample_rate: int, channels: int = 1) -> np.ndarray:
    """Write ``src`` resampled to ``sample_rate`` Hz (format from ``dst``'s suffix).

    With ``channels=2`` the right channel is half the left one. Returns the written data,
    [T] or [T, 2] float32.
    """
    wav, sr = sf.read(str(src), dtype="float32")
    wav = soxr.resample(wav, sr, sample_rate).astype(np.float32)
    if channels == 2:
        wav = np.stack([wav, 0.5 * wav], axis=1)
    dst.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(dst), wav, sample_rate, subtype="PCM_16")
    return wav


@pytest.fixture
def make_vctk_tree(tmp_path: Path) -> Callable[..., Path]:
    """Factory for a small VCTK tree of real speech (FSDD digits resampled to 48 kHz).

    ``make_vctk_tree(version="0.80" | "0.92", speakers=("p225", "p226"), num_utterances=3,
    mics=("mic1", "mic2"), with_txt=True) -> root``. Speaker ``i`` gets FSDD speaker ``i``'s
    digits ``0 .. num_utterances - 1`` as ``{speaker}_{digit + 1:03d}``, with the digit word
    as transcript: 0.80 writes ``root/wav48/{spk}/{utt}.wav``, 0.92 writes
    ``root/wav48_silence_trimmed/{spk}/{utt}_{mic}.flac``; both write ``root/txt/{spk}/{utt}.txt``.
    """
    fsdd_speakers = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")

    def build(
        version: str = "0.80",
        speakers: Sequence[str] = ("p225", "p226"),
        num_utterances: int = 3,
        mics: Sequence[str] = ("mic1", "mic2"),
        with_txt: bool = True,
    ) -> Path:
        root = tmp_path / f"VCTK-{version}"
        for i, spk in enumerate(speakers):
            for digit in range(num_utterances):
                utt = f"{spk}_{digit + 1:03d}"
                src = fsdd_clip(digit, fsdd_speakers[i % len(fsdd_speakers)])
                if version == "0.80":
                    write_resampled(src, root / "wav48" / spk / f"{utt}.wav", 48000)
                else:
                    for mic in mics:
                        dst = root / "wav48_silence_trimmed" / spk / f"{utt}_{mic}.flac"
                        write_resampled(src, dst, 48000)
                if with_txt:
                    txt = root / "txt" / spk / f"{utt}.txt"
                    txt.parent.mkdir(parents=True, exist_ok=True)
                    txt.write_text(_DIGITS[digit].capitalize() + ".\n")
        return root

    return build
