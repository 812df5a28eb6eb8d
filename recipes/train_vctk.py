#!/usr/bin/env python
"""Recipe: train the VQ-VAE of van den Oord et al. (2017, Sec. 4.3) on VCTK or any speaker-folder corpus.

Single process (CPU or one GPU)::

    python recipes/train_vctk.py --data-dir /data/VCTK-Corpus-0.92 --out runs/vctk

Several GPUs (one process each; ``--batch-size`` is per process)::

    accelerate launch --num_processes 4 recipes/train_vctk.py --data-dir /data/VCTK-Corpus-0.92 --out runs/vctk

Resume after an interruption: run the same command with ``--resume``. ``--max-minutes M`` is
one wall-time budget for the whole recipe: the stage running when it is spent stops with a
checkpoint, and the same command with ``--resume`` continues from there.

The recipe runs stages in order, each in its own folder of ``--out``:

* ``vqvae`` -> ``OUT/vqvae``: the VQ-VAE training run (``vqaudio.train``); its ``model/`` is the
  checkpoint for ``vqaudio tokenize / reconstruct / convert --checkpoint OUT/vqvae``.
* ``tokenize`` -> ``OUT/tokens``: codes of every utterance of the corpus (``vqaudio tokenize``,
  bin format), what a language model or the prior trains on.
* ``prior`` -> ``OUT/prior``: the speaker-conditional prior over codes (``vqaudio train-prior``,
  options ``--prior-*``); it holds out its own validation utterances and reports validation
  cross-entropy in bits per code next to the unigram entropy of the codes. Then
  ``vqaudio generate --speaker NAME --checkpoint OUT/vqvae --prior OUT/prior --out DIR``.

The model follows the paper (16 kHz, 64x downsampling, K = 512 codes of D = 64, beta = 0.25,
EMA codebook with decay 0.99, dead codes restarted below one expected assignment per batch,
WaveNet decoder conditioned on codes and speaker, Adam) with the CPU-sized WaveNet of
:class:`vqaudio.config.DecoderConfig` (2 x 10 layers, 64/128/64 channels). The training
defaults are sized so that a few hundred steps on a CPU show the model learning: batches of 8
segments of 0.25 s and Adam at 5e-4 (the paper's 2e-4 learns slowly in a short run; 1e-3 made
the commitment loss spike early on).

Scale up for GPUs with ``--batch-size``, ``--segment-seconds``, ``--learning-rate``,
``--num-stacks``, ``--layers-per-stack``, ``--residual-channels``, ``--gate-channels``,
``--skip-channels``, ``--max-steps``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from vqaudio.config import VQVAEConfig
from vqaudio.prior_train_cli import add_prior_recipe_arguments, prior_configs_from_recipe_args
from vqaudio.runs import shutdown_distributed
from vqaudio.train import TrainConfig
from vqaudio.train_cli import add_model_arguments, add_run_arguments, add_train_config_arguments, train_from_args

VCTK_URL = "https://datashare.ed.ac.uk/handle/10283/3443"

HOW_TO_GET_VCTK = f"""\
train_vctk.py needs a corpus: pass --data-dir.

VCTK (the CSTR VCTK Corpus, 110 English speakers) version 0.92 can be downloaded from the
University of Edinburgh DataShare (see the page for its licence):

    {VCTK_URL}

(VCTK-Corpus-0.92.zip, about 11 GB); unzip it and pass the folder:

    python recipes/train_vctk.py --data-dir VCTK-Corpus-0.92 --out runs/vctk

Accepted layouts of --data-dir:
  VCTK 0.92      ROOT/wav48_silence_trimmed/p225/p225_001_mic1.flac   (--mic mic1 | mic2)
  VCTK 0.80      ROOT/wav48/p225/p225_001.wav
  speaker folders ROOT/{{speaker}}/*.wav|flac|ogg (e.g. VCC 2016: ROOT/SF1/100001.flac)
  FSDD           ROOT/recordings/{{digit}}_{{speaker}}_{{take}}.wav
Audio is resampled to --sample-rate (16000 Hz by default).
"""

#: The recipe's model defaults: the library's, at 16 kHz.
RECIPE_MODEL = VQVAEConfig(sample_rate=16000)

#: The recipe's training defaults, sized for CPU runs of a few hundred steps (module doc).
RECIPE_TRAINING = TrainConfig(batch_size=8, segment_seconds=0.25, learning_rate=5e-4, log_every=10,
                              valid_every=500, checkpoint_every=1000)


def build_parser() -> argparse.ArgumentParser:
    """The recipe's options: data, run, model sizes, training."""
    parser = argparse.ArgumentParser(
        prog="train_vctk.py",
        description="Train the vqaudio VQ-VAE on VCTK (0.80 or 0.92) or any speaker-folder corpus.",
        epilog=f"VCTK 0.92: {VCTK_URL}",
    )
    parser.add_argument("--data-dir", help="VCTK root (0.80 or 0.92, detected from the tree), or any "
                        "{speaker}/*.wav|flac tree; without it, prints how to get VCTK")
    parser.add_argument("--out", default="runs/vctk",
                        help="experiment folder; each stage writes a subfolder (default runs/vctk)")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run, in order (default {','.join(STAGES)})")
    add_run_arguments(parser)
    add_model_arguments(parser, RECIPE_MODEL)
    add_train_config_arguments(parser, RECIPE_TRAINING)
    add_prior_recipe_arguments(parser)
    return parser


def stage_vqvae(args: argparse.Namespace) -> Path:
    """Stage ``vqvae``: train the VQ-VAE into ``OUT/vqvae`` (resumable with ``--resume``).

    Returns the run directory (its ``model/`` is the exported checkpoint).
    """
    run_dir = Path(args.out) / "vqvae"
    stage_args = argparse.Namespace(**vars(args))
    stage_args.data = args.data_dir
    stage_args.out = str(run_dir)
    stopped = train_from_args(stage_args).stopped
    if stopped != "max_steps":
        raise StageStopped("vqvae", stopped)
    return run_dir


def stage_tokenize(args: argparse.Namespace) -> Path:
    """Stage ``tokenize``: codes of the whole corpus into ``OUT/tokens`` (bin format).

    Re-running skips files already tokenized. Returns the tokens directory.
    """
    from vqaudio.tokenize import tokenize

    tokens = Path(args.out) / "tokens"
    summary = tokenize(args.data_dir, Path(args.out) / "vqvae", tokens, format="bin",
                       progress=not getattr(args, "no_progress", False))
    if summary.num_failed:
        raise ValueError(f"{summary.num_failed} files could not be tokenized; see {tokens}")
    return tokens


def stage_prior(args: argparse.Namespace) -> Path:
    """Stage ``prior``: train the prior on ``OUT/tokens`` into ``OUT/prior`` (resumable).

    Returns the prior's directory.
    """
    from vqaudio.prior_train import train_prior

    prior_dir = Path(args.out) / "prior"
    prior_config, train_config = prior_configs_from_recipe_args(args)
    final = train_prior(Path(args.out) / "tokens", prior_dir, prior_config, train_config,
                        resume=bool(args.resume), progress=not getattr(args, "no_progress", False),
                        max_minutes=args.max_minutes, log_with=getattr(args, "log_with", ()))
    if final["stopped"] != "max_steps":
        raise StageStopped("prior", final["stopped"])
    return prior_dir


class StageStopped(Exception):
    """A training stage stopped before its last step, with a checkpoint (``args``: the stage
    and why: ``"max_minutes"`` or ``"signal"``); the recipe stops there."""


#: Stages in the order they run.
STAGES: dict[str, Callable[[argparse.Namespace], Path]] = {
    "vqvae": stage_vqvae,
    "tokenize": stage_tokenize,
    "prior": stage_prior,
}


def main(argv: list[str] | None = None) -> int:
    """Run the recipe; returns the exit status (2 on a usage or data error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.data_dir:
        print(HOW_TO_GET_VCTK, file=sys.stderr)
        return 2
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")

    from vqaudio.audio import AudioError
    from vqaudio.data import CorpusError
    from vqaudio.model import CheckpointError

    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    try:
        for name in stages:
            if deadline is not None:  # --max-minutes is one budget for the whole recipe
                args.max_minutes = (deadline - time.monotonic()) / 60
                if args.max_minutes <= 0:
                    raise StageStopped(name, "max_minutes")
            STAGES[name](args)
    except StageStopped as stop:
        stage, why = stop.args
        what = "--max-minutes reached" if why == "max_minutes" else "stopped by a signal"
        print(f"train_vctk.py: {what} in stage {stage}; run again with --resume to continue", file=sys.stderr)
        return 0
    except (CorpusError, AudioError, CheckpointError, FileExistsError, FileNotFoundError, ValueError) as exc:
        if os.environ.get("VQAUDIO_DEBUG"):
            raise
        print(f"train_vctk.py: error: {exc}", file=sys.stderr)
        if isinstance(exc, CorpusError):
            print(f"(see `python {sys.argv[0]}` without --data-dir for the accepted layouts)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train_vctk.py: interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
