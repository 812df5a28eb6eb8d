"""Speech infilling: replace a stretch of a recording, keeping what is around it.

The recording is tokenized, the codes whose encoder receptive field overlaps the stretch are
resampled by the discrete-diffusion prior conditioned on the codes on both sides
(:meth:`vqaudio.nn.diffusion_prior.DiffusionPrior.infill`), and the codes are decoded with the
speaker's embedding. Codes outside the resampled span are kept exactly; the output is decoded
from codes throughout (so outside the span it is the model's reconstruction of the recording)::

    vqaudio infill IN.wav --start 1.20 --end 1.75 --checkpoint CKPT --prior PRIOR_DIR --out OUT.wav
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqaudio._command import add_decoding_options, add_prior_sampling_arguments
from vqaudio.audio import load_audio, save_audio
from vqaudio.nn.encoder import encoder_receptive_field


@dataclass(frozen=True)
class InfilledFile:
    """What :func:`infill_file` wrote.

    Attributes:
        path: the output WAV (16-bit, the VQ-VAE's rate).
        codes_path: ``.npy`` of the decoded codes, [T'] int64 in [0, K).
        speaker: the speaker of the prior and the decoder.
        span: ``(first, end)`` code indices resampled (``end`` exclusive).
        num_codes: codes of the whole recording.
        seconds: duration of the output in seconds.
    """

    path: Path
    codes_path: Path
    speaker: str
    span: tuple[int, int]
    num_codes: int
    seconds: float


def span_codes(start: float, end: float, num_codes: int, sample_rate: int, hop_length: int,
               receptive_field: int) -> tuple[int, int]:
    """The codes to resample for the stretch ``[start, end)`` seconds: every code whose encoder
    receptive field (``receptive_field`` samples, centred on its hop) overlaps the stretch, since
    those codes carry some of the audio being replaced.

    Returns:
        ``(first, stop)`` code indices, ``0 <= first < stop <= num_codes``.

    Raises:
        ValueError: ``start >= end``, ``start < 0``, or the stretch begins after the recording.
    """
    if not 0 <= start < end:
        raise ValueError(f"need 0 <= --start < --end, got {start} and {end}")
    a, b = start * sample_rate, end * sample_rate  # samples
    if a >= num_codes * hop_length:
        raise ValueError(f"--start {start} s is past the end of the recording "
                         f"({num_codes * hop_length / sample_rate:.2f} s)")
    reach = max(0, (receptive_field - hop_length) // 2)  # samples beyond its hop that a code sees
    first = max(0, math.floor((a - reach) / hop_length))
    # code i sees [i * hop - reach, (i + 1) * hop + reach); it overlaps [a, b) when it starts before b
    stop = min(num_codes, math.ceil((b + reach) / hop_length))
    return first, max(stop, first + 1)


def infill_codes(prior, codes: torch.Tensor, first: int, stop: int, speaker: int, steps: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 generator: torch.Generator | None = None, progress: bool = False,
                 sampler: str = "posterior") -> torch.Tensor:
    """Resample ``codes[first:stop]`` with a diffusion prior, conditioned on both sides.

    A recording longer than the prior's ``max_len`` is infilled in a window of ``max_len``
    codes centred on the span (as much context on each side as fits).

    Args:
        prior: a :class:`vqaudio.nn.diffusion_prior.DiffusionPrior`.
        codes: [T'] int64 codes in [0, K) of the recording.
        first, stop: the span, code indices (``stop`` exclusive).
        speaker: the speaker's id in the prior's table.
        steps, temperature, top_k, top_p, generator, progress, sampler: see
            :meth:`vqaudio.nn.diffusion_prior.DiffusionPrior.sample`.

    Returns:
        [T'] int64: ``codes`` outside the span exactly, new codes inside it.

    Raises:
        ValueError: the span is longer than ``max_len`` or outside the codes.
    """
    n = codes.shape[0]
    max_len = prior.config.max_len
    if not 0 <= first < stop <= n:
        raise ValueError(f"span [{first}, {stop}) is outside the {n} codes")
    if stop - first > max_len:
        raise ValueError(f"the span holds {stop - first} codes, more than the prior's max_len={max_len}")
    lo = max(0, min(first - (max_len - (stop - first)) // 2, n - max_len))
    hi = min(n, lo + max_len)
    device = prior.token_embedding.weight.device
    window = codes[lo:hi].to(device)[None]
    span = torch.zeros_like(window, dtype=torch.bool)
    span[0, first - lo : stop - lo] = True
    new = prior.infill(window, span, torch.tensor([speaker], device=device), steps=steps, temperature=temperature,
                       top_k=top_k, top_p=top_p, generator=generator, progress=progress, sampler=sampler)[0]
    out = codes.clone()
    out[lo:hi] = new.to(codes.device)
    return out


def infill_file(vqvae, prior, in_path: str | os.PathLike, out_path: str | os.PathLike, start: float, end: float,
                speaker: str, steps: int | None = None, prior_temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, temperature: float | None = None, seed: int | None = 0, method: str = "auto",
                overwrite: bool = False, allow_mismatch: bool = False, progress: bool = True,
                sampler: str = "posterior") -> InfilledFile:
    """Infill ``[start, end)`` seconds of ``in_path`` and write the decoded result to ``out_path``
    (and its codes to ``out_path`` with suffix ``.npy``).

    Args:
        vqvae: the :class:`vqaudio.model.VQVAE` whose codes the prior was fitted to.
        prior: a :class:`vqaudio.nn.diffusion_prior.DiffusionPrior`.
        in_path: the recording (any rate; resampled to the VQ-VAE's).
        out_path: the output WAV.
        start, end: the stretch to replace, in seconds.
        speaker: a speaker in both tables (the prior's condition and the decoder's voice).
        steps, prior_temperature, top_k, top_p, sampler: the prior's sampling (see
            :meth:`vqaudio.nn.diffusion_prior.DiffusionPrior.sample`).
        temperature: the WaveNet decoder's sampling temperature (default: the checkpoint's).
        seed: seeds the prior's sampling and the decoder's noise.
        method: decoder implementation (see :meth:`vqaudio.model.VQVAE.decode`).
        overwrite: replace existing outputs.
        allow_mismatch: see :func:`vqaudio.generate.check_compatible`.

    Raises:
        vqaudio.audio.AudioError: the input cannot be read (named), or is too long to decode in
            the memory available (:func:`vqaudio.inference.check_decode_memory`).
        vqaudio.checkpoint.UnknownSpeakerError: the speaker is not in both tables.
        FileExistsError: an output exists and ``overwrite`` is False.
        ValueError: a bad stretch, an autoregressive prior, or incompatible models.
    """
    from vqaudio.generate import check_compatible, save_codes, speaker_ids
    from vqaudio.nn.diffusion_prior import DiffusionPrior

    if not isinstance(prior, DiffusionPrior):
        raise ValueError("infilling needs a diffusion prior (`vqaudio train-prior --type diffusion`); "
                         "the autoregressive prior sees only the left side of a gap")
    out_path = Path(out_path)
    codes_path = out_path.with_suffix(".npy")
    for p in (out_path, codes_path):
        if p.exists() and not overwrite:
            raise FileExistsError(f"{p}: already exists (pass --overwrite to replace it)")
    check_compatible(vqvae, prior, allow_mismatch)
    vqvae_id, prior_id = speaker_ids(vqvae, prior, speaker)
    from vqaudio.inference import check_decode_memory

    check_decode_memory(vqvae, in_path)
    wav = load_audio(in_path, vqvae.sample_rate)
    if len(wav) < vqvae.hop_length:
        raise ValueError(f"{in_path}: {len(wav)} samples is shorter than one code ({vqvae.hop_length} samples)")
    codes = vqvae.encode(torch.from_numpy(wav)[None, None])[0].cpu()
    first, stop = span_codes(start, end, codes.shape[0], vqvae.sample_rate, vqvae.hop_length,
                             encoder_receptive_field(vqvae.config.encoder))
    device = prior.token_embedding.weight.device
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    new = infill_codes(prior, codes, first, stop, prior_id, steps=steps, temperature=prior_temperature,
                       top_k=top_k, top_p=top_p, generator=generator, progress=progress, sampler=sampler)
    decoder_generator = torch.Generator(device=vqvae.device).manual_seed(seed + 1) if seed is not None else None
    out = vqvae.decode(new[None].to(vqvae.device), vqvae_id, temperature=temperature, generator=decoder_generator,
                       method=method, progress=progress)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_audio(out_path, out[0, 0], vqvae.sample_rate)
    save_codes(codes_path, new.numpy().astype(np.int64))
    return InfilledFile(out_path, codes_path, speaker, (first, stop), int(new.shape[0]),
                        out.shape[-1] / vqvae.sample_rate)


# --------------------------------------------------------------------------- CLI glue


def add_infill_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio infill``."""
    parser.add_argument("input", help="audio file (WAV, FLAC, OGG; any rate, mono or stereo)")
    parser.add_argument("--start", type=float, required=True, help="start of the stretch to replace, in seconds")
    parser.add_argument("--end", type=float, required=True, help="end of the stretch to replace, in seconds")
    parser.add_argument("--speaker", help="speaker of the recording (default: guessed from the file name or "
                                          "folder, as in reconstruct)")
    parser.add_argument("--checkpoint", required=True, help="VQ-VAE checkpoint (directory, run directory or bundled name)")
    parser.add_argument("--prior", required=True, metavar="PRIOR_DIR",
                        help="a diffusion prior (`vqaudio train-prior --type diffusion`)")
    parser.add_argument("--out", required=True, help="output WAV path (its codes go beside it as .npy)")
    add_prior_sampling_arguments(parser)
    add_decoding_options(parser, "replace --out (and its .npy) if they exist")


def run_infill(args: argparse.Namespace) -> int:
    """Run ``vqaudio infill`` from parsed arguments; returns the exit status (0)."""
    from vqaudio._system import default_device
    from vqaudio.audio import open_audio
    from vqaudio.generate import load_prior, note_steps_cap
    from vqaudio.inference import infer_speaker
    from vqaudio.model import VQVAE

    open_audio(args.input).close()  # a missing or unreadable input is named before loading models
    device = default_device(args.device)
    vqvae = VQVAE.from_pretrained(args.checkpoint, map_location=device)
    prior = load_prior(args.prior, map_location=device)
    note_steps_cap(prior, args.steps)
    speaker = args.speaker or infer_speaker(args.input, vqvae.speakers)
    if speaker is None:
        raise ValueError(f"{args.input}: cannot tell the speaker from the file name; pass --speaker "
                         f"(known speakers: {', '.join(vqvae.speakers)})")
    result = infill_file(vqvae, prior, args.input, args.out, args.start, args.end, speaker, steps=args.steps,
                         prior_temperature=args.prior_temperature, top_k=args.top_k, top_p=args.top_p,
                         temperature=args.temperature, seed=args.seed, method=args.method,
                         overwrite=args.overwrite, allow_mismatch=args.allow_mismatch,
                         progress=not args.no_progress, sampler=args.sampler)
    first, stop = result.span
    if args.end > result.seconds:
        print(f"note: --end {args.end:g} s is past the end of the recording ({result.seconds:.2f} s): "
              f"infilled to its end", file=sys.stderr)
    print(f"wrote {result.path} ({result.seconds:.2f} s, speaker {result.speaker}): codes {first}..{stop - 1} of "
          f"{result.num_codes} resampled, the rest kept; codes in {result.codes_path.name}")
    return 0


__all__ = ["InfilledFile", "add_infill_arguments", "infill_codes", "infill_file", "run_infill", "span_codes"]
