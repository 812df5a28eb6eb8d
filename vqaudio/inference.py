"""File-level inference: reconstruct a recording, or convert it to another speaker's voice."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from vqaudio.audio import load_audio, save_audio
from vqaudio.model import VQVAE

_FSDD_NAME = re.compile(r"^\d_(?P<speaker>[A-Za-z]+)_\d+$")
_VCTK_NAME = re.compile(r"^(?P<speaker>p\d+|s\d+)_\d+(_mic[12])?$")


@dataclass(frozen=True)
class DecodedFile:
    """What :func:`decode_file` wrote.

    Attributes:
        path: the output WAV.
        speaker: the speaker whose embedding decoded it.
        num_codes: codes the input was encoded into (``T // hop_length``).
        seconds: duration of the output in seconds.
    """

    path: Path
    speaker: str
    num_codes: int
    seconds: float


def infer_speaker(path: str | os.PathLike, speakers: list[str]) -> str | None:
    """Guess the speaker of a corpus file from its name, if that speaker is in ``speakers``.

    Recognises FSDD names (``7_george_3.wav``), VCTK names (``p225_001_mic1.flac``) and
    speaker folders (``SF1/100001.flac``). Returns None when no guess is in the table.
    """
    p = Path(path)
    candidates = []
    for pattern in (_FSDD_NAME, _VCTK_NAME):
        m = pattern.match(p.stem)
        if m:
            candidates.append(m.group("speaker"))
    candidates.append(p.parent.name)
    return next((c for c in candidates if c in speakers), None)


#: Bytes per sample (at the model rate) that encoding and decoding a whole file hold at their
#: peak: the encoder's activations (about 150 measured with fsdd-8k's encoder) and the
#: decoder's sampling noise and outputs.
DECODE_BYTES_PER_SAMPLE = 176


def check_decode_memory(model: VQVAE, path: str | os.PathLike, available: int | None = None) -> None:
    """Refuse, from its header and before reading it, a file too long to encode and decode in
    one piece in the memory available.

    Args:
        model: the VQ-VAE (its rate); path: the audio file; available: bytes (default: the
            system's available memory, :func:`vqaudio._system.available_memory_bytes`).

    Raises:
        vqaudio.audio.AudioError: the file cannot be opened, or it is too long (one line with
            its length, the memory it would need and what is available, and what to do).
    """
    from vqaudio._system import available_memory_bytes
    from vqaudio.audio import AudioError, open_audio

    with open_audio(path) as f:
        frames, rate, channels = f.frames, f.samplerate, f.channels
    samples = frames * model.sample_rate / max(rate, 1)
    need = samples * DECODE_BYTES_PER_SAMPLE + frames * channels * 4 * 2  # + the file read and downmixed
    available = available_memory_bytes("cpu") if available is None else available
    if available is not None and need > 0.8 * available:
        raise AudioError(path, f"{frames} samples at {rate} Hz ({frames / max(rate, 1) / 3600:.1f} h) would need about "
                               f"{need / 2**30:.1f} GiB to encode and decode in one piece, and {available / 2**30:.1f} "
                               f"GiB is available; cut it into shorter files, or use vqaudio tokenize (which streams "
                               f"long files) and vqaudio detokenize")


def decode_file(
    model: VQVAE,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    speaker: str,
    temperature: float | None = None,
    seed: int | None = 0,
    method: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
) -> DecodedFile:
    """Encode ``in_path`` and decode its codes with ``speaker``'s embedding into ``out_path``.

    With the recording's own speaker this is a reconstruction; with another speaker it is a
    voice conversion (van den Oord et al. 2017, Sec. 4.3). The input is resampled to the
    model's rate; the output is a 16-bit WAV at ``model.sample_rate`` Hz, ``num_codes * 64``
    samples long (the trailing partial hop is dropped).

    Raises:
        vqaudio.audio.AudioError: the input cannot be used (the message names the file), or
            is too long to decode in the memory available (:func:`check_decode_memory`).
        vqaudio.model.UnknownSpeakerError: ``speaker`` is not in the model's table.
        FileExistsError: ``out_path`` exists and ``overwrite`` is False.
        ValueError: the input is shorter than one hop.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path}: already exists (pass --overwrite to replace it)")
    speaker_id = model.speaker_id(speaker)
    check_decode_memory(model, in_path)
    wav = load_audio(in_path, model.sample_rate)
    if len(wav) < model.hop_length:
        raise ValueError(f"{in_path}: {len(wav)} samples is shorter than one code ({model.hop_length} samples)")
    codes = model.encode(torch.from_numpy(wav)[None, None])
    generator = torch.Generator(device=model.device).manual_seed(seed) if seed is not None else None
    out = model.decode(codes, speaker_id, temperature=temperature, generator=generator,
                       method=method, progress=progress)
    save_audio(out_path, out[0, 0], model.sample_rate)
    return DecodedFile(out_path, speaker, codes.shape[1], out.shape[-1] / model.sample_rate)
