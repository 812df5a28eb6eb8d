"""Generating speech: sample codes from the prior, decode them with the VQ-VAE's WaveNet.

This is the generation experiment of van den Oord et al. (2017, Sec. 4.3): the prior fitted to
the VQ-VAE's codes is sampled ancestrally (here conditioned on a speaker), and the sampled codes
are decoded to audio by the decoder with the same speaker's embedding. With a prompt, the codes
of a recording are continued instead of starting from nothing. Either prior works: the
autoregressive Transformer (:mod:`vqaudio.nn.prior`, one pass per code) or the discrete-diffusion
prior (:mod:`vqaudio.nn.diffusion_prior`, ``--steps`` passes for the whole utterance).

    vqaudio generate --speaker SF1 --seconds 3 --num 2 --checkpoint CKPT --prior PRIOR_DIR --out DIR

writes ``DIR/SF1_000.wav``, ``DIR/SF1_000.npy`` (the codes decoded, ``[T'] int64``), ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vqaudio._command import add_decoding_options, add_prior_sampling_arguments
from vqaudio._files import atomic_path
from vqaudio._system import default_device
from vqaudio.audio import load_audio, save_audio
from vqaudio.nn.diffusion_prior import DIFFUSION_PRIOR_MODEL_TYPE, DiffusionPrior
from vqaudio.nn.prior import PRIOR_MODEL_TYPE, PriorTransformer

#: Either prior: both have ``config.codebook_size``, ``speakers``, ``metadata`` and ``sample``.
Prior = PriorTransformer | DiffusionPrior


def load_prior(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Prior:
    """Load a prior of either kind (by ``model_type`` in its ``config.json``: ``"prior"`` or
    ``"diffusion-prior"``) from its directory (a ``train-prior --out`` folder) or a bundled
    name (``fsdd-8k-prior``, ``fsdd-8k-diffusion``: :data:`vqaudio.model.PRETRAINED_DIR`).

    Raises:
        vqaudio.checkpoint.CheckpointError: not a prior checkpoint, or a missing or malformed file.
    """
    from vqaudio.checkpoint import CONFIG_NAME, CheckpointError
    from vqaudio.model import resolve_checkpoint

    path = resolve_checkpoint(directory)
    try:
        kind = json.loads((path / CONFIG_NAME).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path / CONFIG_NAME}: not valid JSON ({exc})") from None
    if kind == DIFFUSION_PRIOR_MODEL_TYPE:
        return DiffusionPrior.from_pretrained(path, map_location)
    if kind != PRIOR_MODEL_TYPE:
        raise CheckpointError(f"{path / CONFIG_NAME}: model_type is {kind!r}, expected a prior "
                              f"({PRIOR_MODEL_TYPE!r} or {DIFFUSION_PRIOR_MODEL_TYPE!r})")
    return PriorTransformer.from_pretrained(path, map_location)


@dataclass(frozen=True)
class GeneratedSample:
    """One generated utterance written by :func:`generate`.

    Attributes:
        wav_path: the 16-bit WAV at the VQ-VAE's sample rate.
        codes_path: ``.npy`` of the decoded codes, [T'] int64 in [0, K) (prompt codes first).
        speaker: the speaker name that conditioned the prior and the decoder.
        num_codes: codes decoded, the prompt's included.
        prompt_codes: codes taken from the prompt (0 without one).
        seconds: duration of the WAV in seconds.
    """

    wav_path: Path
    codes_path: Path
    speaker: str
    num_codes: int
    prompt_codes: int
    seconds: float


def check_compatible(vqvae, prior: Prior, allow_mismatch: bool = False) -> None:
    """Check that ``prior`` was fitted to codes of ``vqvae``.

    Raises:
        ValueError: different codebook sizes; or the prior's recorded VQ-VAE ``checkpoint_id``
            differs from ``vqvae.checkpoint_id`` (its codes mean other sounds) and
            ``allow_mismatch`` is False.
    """
    k = vqvae.config.quantizer.codebook_size
    if prior.config.codebook_size != k:
        raise ValueError(
            f"the prior models {prior.config.codebook_size} codes but the VQ-VAE's codebook has {k}"
        )
    fitted_to = prior.metadata.get("checkpoint_id")
    if fitted_to and fitted_to != vqvae.checkpoint_id and not allow_mismatch:
        raise ValueError(
            f"the prior was trained on tokens of VQ-VAE checkpoint {fitted_to}, not of this one "
            f"({vqvae.checkpoint_id}); its codes would decode to noise. Pass the checkpoint that "
            f"tokenized the prior's training data (or --allow-mismatch to try anyway)"
        )


def speaker_ids(vqvae, prior: Prior, name: str) -> tuple[int, int]:
    """Ids of speaker ``name`` in the VQ-VAE's and the prior's tables.

    Raises:
        vqaudio.model.UnknownSpeakerError: ``name`` is in neither table or only in one (the
            message lists the speakers both know).
        ValueError: the two tables share no speaker (a prior of another model, used with
            ``--allow-mismatch``).
    """
    from vqaudio.model import UnknownSpeakerError

    known = [s for s in vqvae.speakers if s in prior.speakers]
    if not known:
        raise ValueError(f"the prior and the VQ-VAE share no speaker (prior: {', '.join(prior.speakers)}; VQ-VAE: "
                         f"{', '.join(vqvae.speakers)}): the prior was fitted to another model's codes and speakers")
    if name not in vqvae.speakers or name not in prior.speakers:
        raise UnknownSpeakerError(name, known)
    return vqvae.speaker_id(name), prior.speaker_id(name)


def encode_prompt(vqvae, path: str | os.PathLike) -> torch.Tensor:
    """Codes of a recording to continue: ``[1, P]`` int64 in [0, K), P = T // hop_length.

    The file is resampled to the VQ-VAE's rate.

    Raises:
        vqaudio.audio.AudioError: the file cannot be read (the message names it).
        ValueError: it is shorter than one hop.
    """
    wav = load_audio(path, vqvae.sample_rate)
    if len(wav) < vqvae.hop_length:
        raise ValueError(f"{path}: {len(wav)} samples is shorter than one code ({vqvae.hop_length} samples)")
    return vqvae.encode(torch.from_numpy(wav)[None, None]).cpu()


def sample_codes(
    prior: Prior,
    speaker: int,
    num_codes: int,
    num: int = 1,
    prompt: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    steps: int | None = None,
    sampler: str = "posterior",
) -> torch.Tensor:
    """Sample ``num`` code sequences of one speaker from the prior, as one batch.

    The autoregressive prior continues the prompt code by code; the diffusion prior denoises
    a window of up to ``max_len`` codes at once in ``steps`` reverse steps, with the prompt's
    last codes kept as known codes, and goes on window by window past ``max_len`` (see
    :func:`_sample_diffusion_windows`).

    Args:
        prior: a :class:`PriorTransformer` or :class:`DiffusionPrior` (on any device;
            ``generator`` must be on the same one).
        speaker: speaker id in the prior's table.
        num_codes: new codes per sequence.
        num: sequences.
        prompt: optional [1, P] or [num, P] int64 codes to continue.
        temperature, top_k, top_p: see :func:`vqaudio.nn.prior.filter_logits`.
        steps: reverse steps of the diffusion prior (default: its T); ignored by the
            autoregressive prior.
        sampler: how the diffusion prior runs them, one of
            :data:`vqaudio.nn.diffusion_prior.SAMPLERS`; ignored by the autoregressive prior.

    Returns:
        codes: [num, P + num_codes] int64 in [0, K), the prompt first.

    Raises:
        ValueError: bad sampling parameters.
    """
    device = prior.token_embedding.weight.device
    speakers = torch.full((num,), speaker, dtype=torch.long, device=device)
    if prompt is not None:
        prompt = prompt.to(device)
        if prompt.shape[0] == 1 and num > 1:
            prompt = prompt.expand(num, -1)
    if isinstance(prior, DiffusionPrior):
        new = _sample_diffusion_windows(prior, speakers, num_codes, prompt, steps=steps, temperature=temperature,
                                        top_k=top_k, top_p=top_p, generator=generator, progress=progress,
                                        sampler=sampler)
        return new if prompt is None else torch.cat([prompt, new], dim=1)
    new = prior.sample(speakers, num_codes, prompt=prompt, temperature=temperature, top_k=top_k,
                       top_p=top_p, generator=generator, progress=progress)
    return new if prompt is None else torch.cat([prompt, new], dim=1)


def _sample_diffusion_windows(prior: DiffusionPrior, speakers: torch.Tensor, num_codes: int,
                              prompt: torch.Tensor | None, steps: int | None, **sampling) -> torch.Tensor:
    """Sample ``num_codes`` new codes after ``prompt`` from a diffusion prior, any number of them.

    The prior sees at most ``max_len`` codes, so a longer sequence is denoised in windows, each
    one outpainting (VQ-Diffusion's sampling with known codes held fixed): a window keeps the
    last ``min(have, max_len // 2)`` codes sampled (or given) so far as known codes, more when
    fewer new ones are left, and samples the rest of its ``max_len`` positions. A sequence that
    fits in one window (prompt context included) takes one pass of ``steps`` reverse steps.

    Args:
        prior: the diffusion prior.
        speakers: [B] int64 speaker ids.
        num_codes: new codes per sequence, >= 1.
        prompt: None or [B, P] int64 codes in [0, K) to continue.
        steps: reverse steps per window (default: the prior's T).
        **sampling: ``temperature``, ``top_k``, ``top_p``, ``generator``, ``progress``,
            ``sampler`` of :meth:`DiffusionPrior.sample`.

    Returns:
        codes: [B, num_codes] int64 in [0, K), the new codes only.
    """
    max_len, keep = prior.config.max_len, prior.config.max_len // 2
    batch = speakers.shape[0]
    have = prompt if prompt is not None else torch.zeros(batch, 0, dtype=torch.long, device=speakers.device)
    start, remaining = have.shape[1], num_codes
    while remaining > 0:
        chunk = min(remaining, max_len - min(have.shape[1], keep))
        context = have[:, have.shape[1] - min(have.shape[1], max_len - chunk):]
        if context.shape[1] == 0:
            new = prior.sample(speakers, chunk, steps=steps, **sampling)
        else:
            known = torch.cat([context, torch.full((batch, chunk), -1, dtype=torch.long, device=have.device)], 1)
            new = prior.sample(speakers, known.shape[1], steps=steps, known=known, **sampling)[:, context.shape[1]:]
        have = torch.cat([have, new], dim=1)
        remaining -= chunk
    return have[:, start:]


def generate(
    vqvae,
    prior: Prior,
    speaker: str | Sequence[str],
    seconds: float,
    out_dir: str | os.PathLike,
    num: int = 1,
    prompt: str | os.PathLike | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    decoder_temperature: float | None = None,
    seed: int | None = 0,
    overwrite: bool = False,
    allow_mismatch: bool = False,
    method: str = "auto",
    progress: bool = True,
    steps: int | None = None,
    sampler: str = "posterior",
) -> list[GeneratedSample]:
    """Generate ``num`` utterances of each speaker, ``seconds`` long each, into ``out_dir``.

    Per speaker, ``round(seconds * codes_per_second)`` codes (at least 1) are sampled from the
    prior per utterance, after the prompt's codes if a prompt is given; then the utterances of
    all speakers are decoded together in one generation loop (``vqvae.decode_batch``), each
    with its speaker's embedding, so each WAV is ``(P + num_codes) * hop_length`` samples at
    ``vqvae.sample_rate`` Hz. Files: ``{speaker}_{i:03d}.wav`` and ``{speaker}_{i:03d}.npy``
    (codes, [T'] int64), each written atomically. The index ``i`` starts after the highest
    one already in ``out_dir`` unless ``overwrite``, so earlier samples are never replaced.

    Args:
        vqvae: a :class:`vqaudio.model.VQVAE` (its codes are what the prior was fitted to).
        prior: a :class:`PriorTransformer` or :class:`DiffusionPrior` on the same device.
        speaker: a speaker name, or several; each in both tables.
        seconds: duration to sample, in seconds (> 0), not counting the prompt.
        out_dir: output folder (created).
        num: utterances per speaker.
        prompt: optional audio file whose codes are continued.
        temperature, top_k, top_p: sampling of the prior.
        decoder_temperature: sampling temperature of the WaveNet decoder (default: the
            checkpoint's, ``config.decoder.temperature``).
        seed: per speaker, seeds one ``torch.Generator`` used for the prior, then for the
            decoder's noise, so a speaker's samples do not depend on the other speakers asked
            for (``None``: torch's global generator).
        overwrite: number the files from 000, replacing files of the same name.
        allow_mismatch: see :func:`check_compatible`.
        method: decoder implementation, see :meth:`vqaudio.model.VQVAE.decode` (default: the
            fastest available).
        progress: show progress bars.
        steps: reverse steps of a diffusion prior (default: all T of them).
        sampler: how a diffusion prior runs them (see :func:`sample_codes`).

    Returns:
        one :class:`GeneratedSample` per utterance, speaker by speaker.

    Raises:
        vqaudio.model.UnknownSpeakerError: unknown speaker (lists the known ones).
        ValueError: ``seconds <= 0``, ``num < 1``, bad sampling parameters or method,
            incompatible models.
        vqaudio.audio.AudioError: an unreadable prompt.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    names = [speaker] if isinstance(speaker, str) else list(speaker)
    check_compatible(vqvae, prior, allow_mismatch)
    ids = [speaker_ids(vqvae, prior, name) for name in names]  # fail before sampling anything
    vqvae.resolve_decode_method(method)
    codes_per_second = vqvae.sample_rate / vqvae.hop_length
    num_codes = max(1, round(seconds * codes_per_second))
    prompt_codes = encode_prompt(vqvae, prompt) if prompt is not None else None
    n_prompt = 0 if prompt_codes is None else prompt_codes.shape[1]

    device = prior.token_embedding.weight.device
    hop = vqvae.hop_length
    codes, noise, decoder_ids = [], [], []
    for vqvae_id, prior_id in ids:
        generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        c = sample_codes(prior, prior_id, num_codes, num, prompt_codes, temperature, top_k, top_p,
                         generator, progress, steps, sampler)
        if generator is not None and vqvae.device != device:
            generator = torch.Generator(device=vqvae.device).manual_seed(seed + 1)
        # the noise vqvae.decode would draw for this [num, T'] batch
        u = torch.rand(num, c.shape[1] * hop, generator=generator,
                       device=generator.device if generator is not None else "cpu")
        codes += list(c.to(vqvae.device))
        noise += list(u)
        decoder_ids += [vqvae_id] * num
    wavs = vqvae.decode_batch(codes, decoder_ids, temperature=decoder_temperature, noise=noise,
                              method=method, progress=progress)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for k, name in enumerate(names):
        first = 0 if overwrite else _next_index(out_dir, name)
        for i in range(num):
            stem = f"{name}_{first + i:03d}"
            wav_path, codes_path = out_dir / f"{stem}.wav", out_dir / f"{stem}.npy"
            wav = wavs[k * num + i]
            save_audio(wav_path, wav[0], vqvae.sample_rate)
            save_codes(codes_path, codes[k * num + i].cpu().numpy())
            results.append(GeneratedSample(wav_path, codes_path, name, int(codes[k * num + i].shape[0]), n_prompt,
                                           wav.shape[-1] / vqvae.sample_rate))
    return results


def save_codes(path: str | os.PathLike, codes: np.ndarray) -> Path:
    """Write ``codes`` ([T'] int64) as ``.npy`` atomically (temporary name, then rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no suffix
        np.save(f, np.asarray(codes, dtype=np.int64))
    return Path(path)


def _next_index(out_dir: Path, speaker: str) -> int:
    used = []
    for p in list(out_dir.glob(f"{speaker}_*.wav")) + list(out_dir.glob(f"{speaker}_*.npy")):
        tail = p.stem[len(speaker) + 1 :]
        if tail.isdigit():
            used.append(int(tail))
    return max(used, default=-1) + 1


# --------------------------------------------------------------------------- CLI glue


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio generate``."""
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--speaker", nargs="+", action="extend", metavar="NAME",
                     help="speaker(s) to generate (from the checkpoint's speaker table)")
    who.add_argument("--all-speakers", action="store_true", help="generate for every speaker")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds to sample per utterance (default 2)")
    parser.add_argument("--num", type=int, default=1, help="utterances per speaker (default 1)")
    parser.add_argument("--checkpoint", required=True, help="VQ-VAE checkpoint (directory, run directory or bundled name)")
    parser.add_argument("--prior", required=True, metavar="PRIOR_DIR",
                        help="folder written by `vqaudio train-prior`, or a bundled prior's name")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder for WAVs and codes (.npy)")
    parser.add_argument("--prompt", metavar="FILE", help="audio file whose codes are continued")
    add_prior_sampling_arguments(parser)
    add_decoding_options(parser, "number files from 000, replacing existing ones",
                         temperature_aliases=("--decoder-temperature",), temperature_dest="decoder_temperature")


def note_steps_cap(prior, steps: int | None) -> None:
    """Say on stderr when ``--steps`` asks a diffusion prior for more reverse steps than its T
    (it runs all T of them)."""
    T = getattr(getattr(prior, "schedule", None), "T", None)
    if steps is not None and T is not None and steps > T:
        print(f"note: --steps {steps}: the prior has {T} reverse steps; running all {T}", file=sys.stderr)


def run_generate(args: argparse.Namespace) -> int:
    """Run ``vqaudio generate`` from parsed arguments; returns the exit status (0)."""
    from vqaudio.model import VQVAE

    device = default_device(args.device)
    vqvae = VQVAE.from_pretrained(args.checkpoint, map_location=device)
    prior = load_prior(args.prior, map_location=device)
    if args.steps is not None and not isinstance(prior, DiffusionPrior):
        raise ValueError(f"--steps is for a diffusion prior; {args.prior} is autoregressive")
    note_steps_cap(prior, args.steps)
    if args.sampler != "posterior" and not isinstance(prior, DiffusionPrior):
        raise ValueError(f"--sampler is for a diffusion prior; {args.prior} is autoregressive")
    check_compatible(vqvae, prior, args.allow_mismatch)
    names: Sequence[str] = [s for s in vqvae.speakers if s in prior.speakers] if args.all_speakers else args.speaker
    if args.all_speakers and not names:
        speaker_ids(vqvae, prior, "")  # raises: the tables share no speaker
    for sample in generate(
        vqvae, prior, names, args.seconds, args.out, num=args.num, prompt=args.prompt,
        temperature=args.prior_temperature, top_k=args.top_k, top_p=args.top_p,
        decoder_temperature=args.decoder_temperature, seed=args.seed, overwrite=args.overwrite,
        allow_mismatch=args.allow_mismatch, method=args.method, progress=not args.no_progress,
        steps=args.steps, sampler=args.sampler,
    ):
        print(f"wrote {sample.wav_path} ({sample.seconds:.2f} s, speaker {sample.speaker}, "
              f"{sample.num_codes} codes, {sample.prompt_codes} from the prompt) and {sample.codes_path.name}")
    return 0


__all__ = [
    "GeneratedSample",
    "add_generate_arguments",
    "add_prior_sampling_arguments",
    "check_compatible",
    "encode_prompt",
    "generate",
    "load_prior",
    "run_generate",
    "sample_codes",
    "save_codes",
    "speaker_ids",
]
