"""Tokens back to audio: ``vqaudio detokenize TOKENS_DIR --checkpoint CKPT --out DIR``.

Decodes every entry of a token directory written by ``vqaudio tokenize`` with the VQ-VAE that
made it (:func:`detokenize`), one WAV file per entry at the model rate, named after its source
file (:func:`output_names`). Existing WAV files are kept, so a killed run resumes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from vqaudio._system import available_cores, default_device
from vqaudio.tokens import read_tokens

if TYPE_CHECKING:
    from vqaudio.model import VQVAE


def detokenize(
    tokens_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | VQVAE,
    out_dir: str | os.PathLike,
    *,
    speaker: str | None = None,
    temperature: float | None = None,
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
        tokens_dir: written by :func:`vqaudio.tokenize.tokenize`.
        checkpoint: the VQ-VAE that made the tokens (directory, bundled name, or model).
        out_dir: folder for the WAV files.
        speaker: decode every entry with this speaker; default: each entry's own speaker if
            the checkpoint knows it, else the first speaker of the table.
        temperature, seed: sampling of the decoder (temperature default: the checkpoint's,
            ``config.decoder.temperature``).
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
    from vqaudio.model import VQVAE

    model = checkpoint.eval() if isinstance(checkpoint, VQVAE) else VQVAE.from_pretrained(
        checkpoint, map_location=default_device(device))
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


