"""``vqaudio evaluate``: the argument layer over :func:`vqaudio.evaluate.evaluate`."""

from __future__ import annotations

import argparse
import sys

from vqaudio._command import add_prior_sampling_arguments
from vqaudio.config import DECODE_METHODS
from vqaudio.evaluate.baselines import DEFAULT_BASELINES
from vqaudio.evaluate.pipeline import SKIPPABLE


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio evaluate``."""
    parser.add_argument("data", nargs="+",
                        help="corpus folder (FSDD, VCTK, {speaker}/*.wav), audio files, or a .txt file list")
    parser.add_argument("--checkpoint", help="VQ-VAE checkpoint (directory, training run, or bundled name); "
                        "without it only the baselines are scored")
    parser.add_argument("--out", required=True, help="report folder (report.json, report.md, plots/, audio/)")
    parser.add_argument("--prior", nargs="+", metavar="PRIOR_DIR",
                        help="prior checkpoint(s) (autoregressive or diffusion): also generate and judge samples "
                             "per speaker; several are compared in one report on the same seeds")
    add_prior_sampling_arguments(parser)
    parser.add_argument("--split", choices=("auto", "held-out", "all"), default="auto",
                        help="held-out split of a corpus folder (FSDD: takes 0-4), or all clips "
                        "(default auto: held-out for a folder, all for files)")
    parser.add_argument("--num-held-out", type=int, default=5,
                        help="utterances per speaker in the held-out split (not FSDD; default 5)")
    parser.add_argument("--max-clips", type=int, help="evaluate at most N clips, spread over speakers "
                        "(vqaudio decodes sample by sample: this bounds the run time)")
    parser.add_argument("--max-conversions", type=int, help="at most N speaker conversions (default: one per clip)")
    parser.add_argument("--conversion-matrix", type=int, default=0, metavar="N",
                        help="also decode N clips (one per speaker first) in every voice of the checkpoint, shown "
                             "as a matrix on the listening page (default 0: none)")
    parser.add_argument("--generate-per-speaker", type=int, default=2, help="prior samples per speaker (default 2)")
    parser.add_argument("--generate-seconds", type=float, help="length of each prior sample (default: median clip)")
    parser.add_argument("--baselines", default=",".join(DEFAULT_BASELINES),
                        help=f"comma-separated baselines, or 'none' (default {','.join(DEFAULT_BASELINES)})")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {','.join(SKIPPABLE)}")
    parser.add_argument("--join-seconds", type=float, default=3.0,
                        help="join clips per speaker into groups of at least this many seconds (default 3)")
    parser.add_argument("--gap-seconds", type=float, default=0.3, help="silence between joined clips (default 0.3)")
    parser.add_argument("--batch-size", type=int, default=16, help="clips decoded together (default 16)")
    parser.add_argument("--temperature", type=float, help="sampling temperature of the WaveNet decoder (default: the checkpoint's, 1 unless it sets one; 0: the most likely sample)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the decoding (default 0)")
    parser.add_argument("--method", default="auto", choices=DECODE_METHODS,
                        help="decoding implementation (default auto: the fastest available)")
    parser.add_argument("--device", help="torch device of the model: cpu, cuda, cuda:1, ... (default: cuda if "
                                         "available, else cpu); the judges run on the CPU")
    parser.add_argument("--plot-clips", type=int, default=3,
                        help="clips in the spectrogram plot and on the listening page report.html (default 3)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an --out folder that holds other files or another evaluation")
    parser.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true",
                        help="no progress bars (--quiet is the same)")


def run_evaluate(args: argparse.Namespace) -> int:
    """Run the evaluation; print the reconstruction table and where the report is."""
    from vqaudio.evaluate import MissingExtraError, evaluate
    from vqaudio.evaluate.report import markdown_table

    baselines = [] if args.baselines.strip().lower() == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    data = args.data[0] if len(args.data) == 1 else args.data
    try:
        report = evaluate(
            args.checkpoint, data, args.out, prior=(args.prior[0] if args.prior and len(args.prior) == 1 else args.prior), split=args.split, num_held_out=args.num_held_out,
            max_clips=args.max_clips, max_conversions=args.max_conversions,
            generate_per_speaker=args.generate_per_speaker, generate_seconds=args.generate_seconds,
            baselines=baselines, skip=skip, join_seconds=args.join_seconds, gap_seconds=args.gap_seconds,
            batch_size=args.batch_size, temperature=args.temperature, seed=args.seed, method=args.method,
            num_plot_clips=args.plot_clips, num_threads=args.threads, overwrite=args.overwrite,
            progress=not args.no_progress, device=args.device, prior_steps=args.steps, prior_sampler=args.sampler,
            prior_temperature=args.prior_temperature, prior_top_k=args.top_k, prior_top_p=args.top_p,
            allow_mismatch=args.allow_mismatch, conversion_matrix=args.conversion_matrix,
        )
    except MissingExtraError as exc:
        print(f"vqaudio evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(report["systems"]))
    print(f"\nwrote {args.out}/report.md and report.json ({report['timings']['total_s']:.0f} s)")
    return 0
