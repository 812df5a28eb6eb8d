"""The ``vqaudio`` command: a thin argument layer over library functions.

Each subcommand is a pair of functions: ``add_<name>_arguments(parser)`` declares its options
and ``run_<name>(args) -> int`` runs it. They live in the command's options module where the
library behind it is large (``vqaudio/train_cli.py``, ``prior_train_cli.py``,
``tokenize_cli.py``, ``evaluate/cli.py``), at the end of the module for the small ones
(``generate.py``, ``infill.py``), and here for ``reconstruct`` and ``convert``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from vqaudio import __version__
from vqaudio._command import add_decoding_options, run_command

#: subcommand -> (module, name used in add_*_arguments / run_*, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "train": ("vqaudio.train_cli", "train", "train a VQ-VAE on a corpus (VCTK, speaker folders, FSDD)"),
    "tokenize": ("vqaudio.tokenize_cli", "tokenize", "turn audio files into code sequences"),
    "detokenize": ("vqaudio.tokenize_cli", "detokenize", "turn code sequences back into audio"),
    "reconstruct": ("vqaudio.cli", "reconstruct", "encode a recording and decode it with its own speaker"),
    "convert": ("vqaudio.cli", "convert", "encode a recording and decode it with another speaker's voice"),
    "train-prior": ("vqaudio.prior_train_cli", "train_prior", "train a prior on tokens (autoregressive or diffusion)"),
    "generate": ("vqaudio.generate", "generate", "sample codes from the prior and decode them to audio"),
    "infill": ("vqaudio.infill", "infill", "replace a stretch of a recording, keeping what is around it (diffusion prior)"),
    "evaluate": ("vqaudio.evaluate.cli", "evaluate", "score a checkpoint and classic codecs on held-out audio"),
}


def _add_decode_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="audio file (WAV, FLAC, OGG; any rate, mono or stereo)")
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory, training run directory, or bundled name")
    parser.add_argument("--out", required=True, help="output WAV path")
    add_decoding_options(parser, "replace --out if it exists")


def add_reconstruct_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio reconstruct``."""
    _add_decode_options(parser)
    parser.add_argument("--speaker", help="speaker of the recording (default: guessed from the "
                        "file name or folder, e.g. FSDD '7_george_3.wav', VCTK 'p225/...')")


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio convert``."""
    _add_decode_options(parser)
    parser.add_argument("--speaker", required=True, help="target speaker name (from the checkpoint's table)")


def run_reconstruct(args: argparse.Namespace) -> int:
    """Reconstruct ``args.input`` with its own speaker (given or guessed)."""
    from vqaudio._system import default_device
    from vqaudio.inference import infer_speaker
    from vqaudio.model import VQVAE

    _check_input(args.input)  # a missing file is named as such, not as a speaker we cannot tell
    model = VQVAE.from_pretrained(args.checkpoint, map_location=default_device(args.device))
    speaker = args.speaker or infer_speaker(args.input, model.speakers)
    if speaker is None:
        raise ValueError(
            f"{args.input}: cannot tell the speaker from the file name; pass --speaker "
            f"(known speakers: {', '.join(model.speakers)})"
        )
    return _decode(model, args, speaker)


def run_convert(args: argparse.Namespace) -> int:
    """Convert ``args.input`` to ``args.speaker``'s voice."""
    from vqaudio._system import default_device
    from vqaudio.model import VQVAE

    _check_input(args.input)
    return _decode(VQVAE.from_pretrained(args.checkpoint, map_location=default_device(args.device)), args, args.speaker)


def _check_input(path: str) -> None:
    """Raise :class:`vqaudio.audio.AudioError` (naming ``path``) when it is missing, a folder,
    or not audio that soundfile can open, before a model is loaded."""
    from vqaudio.audio import open_audio

    open_audio(path).close()


def _decode(model, args: argparse.Namespace, speaker: str) -> int:
    from vqaudio.inference import decode_file

    result = decode_file(model, args.input, args.out, speaker, temperature=args.temperature,
                         seed=args.seed, method=args.method, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"wrote {result.path} ({result.seconds:.2f} s, speaker {result.speaker}, {result.num_codes} codes)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``vqaudio`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="vqaudio",
        description="VQ-VAE audio tokenizer and WaveNet vocoder (van den Oord et al., 2017).",
        epilog="Arguments can be read from a file, one per line: vqaudio tokenize @files.txt ...",
        fromfile_prefix_chars="@",
    )
    parser.add_argument("--version", action="version", version=f"vqaudio {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command, (module_name, name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(command, help=help_text, description=help_text)
        getattr(module, f"add_{name}_arguments")(p)
        p.set_defaults(_run=getattr(module, f"run_{name}"), _parser=p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vqaudio`` console script; returns the exit status.

    Expected errors (bad files, unknown speakers, missing checkpoints, existing outputs, a float
    option that is not finite) are printed as one line naming the problem, with exit status 2;
    ``VQAUDIO_DEBUG=1`` shows the traceback instead.
    """
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # the subcommand's usage, not the top-level one
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    check_finite_options(args._parser, args)
    return run_command(args.command, args._run, args)


def check_finite_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse ``inf`` and ``nan`` for every float option of a command, naming the option
    (``parser.error``: its usage and one line, exit status 2); ranges are each command's."""
    import math

    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if action.type is float and isinstance(value, float) and not math.isfinite(value):
            parser.error(f"{'/'.join(action.option_strings) or action.dest}: expected a finite number, got {value}")


if __name__ == "__main__":
    sys.exit(main())
