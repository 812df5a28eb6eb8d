"""Running one ``vqaudio`` subcommand: its exit status and its one-line errors.

Kept apart from :mod:`vqaudio.cli` (which builds the parser of every command) so that a
command's own entry point, such as ``python -m vqaudio.tokenize`` under ``accelerate launch``,
runs with the same error handling without importing the other commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_command(command: str, run: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run one subcommand as :func:`vqaudio.cli.main` does (also for ``python -m
    vqaudio.tokenize``): its exit status; expected errors (a full disk, quota or read-only file
    system among them) as one line (status 2), Ctrl-C as status 130, and the
    torch.distributed process group shut down at the end under a launcher."""
    import os

    from vqaudio.audio import AudioError
    from vqaudio.checkpoint import CheckpointError, UnknownSpeakerError

    try:
        return int(run(args) or 0)
    except (AudioError, CheckpointError, UnknownSpeakerError, FileExistsError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("VQAUDIO_DEBUG"):
            raise
        print(f"vqaudio {command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a quota, a read-only file system: one line naming them
        from vqaudio._files import DISK_ERRNOS, DiskFullError, disk_error

        if os.environ.get("VQAUDIO_DEBUG") or exc.errno not in DISK_ERRNOS:
            raise
        if not isinstance(exc, DiskFullError):
            exc = disk_error(exc.errno, exc.filename or os.getcwd())
        print(f"vqaudio {command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqaudio {command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # launched by torchrun / accelerate launch
            from vqaudio.runs import shutdown_distributed

            shutdown_distributed()


def add_decoding_options(parser: argparse.ArgumentParser, overwrite_help: str,
                         temperature_aliases: tuple[str, ...] = (), temperature_dest: str = "temperature") -> None:
    """The WaveNet decoding options of the commands that decode audio (``reconstruct``,
    ``convert``, ``generate``, ``infill``, ``detokenize``), with the same names, defaults and meanings:
    ``--temperature`` (the decoder's; 0 takes the most likely sample; default the checkpoint's), ``--seed``, ``--method``
    (:data:`vqaudio.config.DECODE_METHODS`), ``--device``, ``--overwrite`` (``overwrite_help``
    says what it replaces) and ``--no-progress``."""
    from vqaudio.config import DECODE_METHODS

    parser.add_argument("--temperature", *temperature_aliases, dest=temperature_dest, type=float,
                        help="sampling temperature of the WaveNet decoder (default: the checkpoint's, 1 unless it sets one; 0: the most likely sample)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sampling (default 0)")
    parser.add_argument("--method", default="auto", choices=DECODE_METHODS,
                        help="decoding implementation (default auto: cuda on a GPU, else the compiled numba loop)")
    parser.add_argument("--device", help="torch device of the model: cpu, cuda, cuda:1, ... (default: cuda if "
                                         "available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                        help="no progress bars (--quiet is the same)")


def add_prior_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of sampling a prior, the same in ``generate``, ``infill`` and ``evaluate``: ``--steps``,
    ``--sampler``, ``--prior-temperature``, ``--top-k``, ``--top-p`` and ``--allow-mismatch``."""
    parser.add_argument("--steps", type=int, default=None,
                        help="reverse steps of a diffusion prior per window of up to its max_len codes (default: "
                             "all of its T steps; fewer skip evenly); not used by the autoregressive prior")
    # the choices are vqaudio.nn.diffusion_prior.SAMPLERS (not imported: this module loads no torch)
    parser.add_argument("--sampler", choices=("posterior", "confidence"), default="posterior",
                        help="how a diffusion prior runs its steps: posterior (VQ-Diffusion's reverse process, "
                             "the default) or confidence (MaskGIT: the codes it is surest of first; on fsdd-8k better "
                             "with few --steps); not used by the autoregressive prior")
    parser.add_argument("--prior-temperature", type=float, default=1.0,
                        help="prior sampling temperature (default 1; 0 is greedy)")
    parser.add_argument("--top-k", type=int, default=None, help="sample among the k most likely codes (0: all)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling: smallest set of codes with probability >= p")
    parser.add_argument("--allow-mismatch", action="store_true",
                        help="use a prior trained on tokens of another VQ-VAE checkpoint")
