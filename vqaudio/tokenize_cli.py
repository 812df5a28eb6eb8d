"""Options of ``vqaudio tokenize`` and ``vqaudio detokenize``, mapped onto
:func:`vqaudio.tokenize.tokenize` and :func:`vqaudio.detokenize.detokenize`.

``python -m vqaudio.tokenize`` (what ``--num-processes`` starts, and ``accelerate launch -m
vqaudio.tokenize``) runs :func:`main` of this module.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

from vqaudio._files import atomic_write_json
from vqaudio._command import add_decoding_options
from vqaudio.detokenize import detokenize
from vqaudio.nn.encoder import PRECISIONS
from vqaudio.tokenize import TokenizeSummary, tokenize
from vqaudio.tokens import FORMATS


def add_tokenize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio tokenize``."""
    parser.add_argument("inputs", nargs="+", metavar="DIR_OR_FILES",
                        help="a corpus folder (VCTK, FSDD, speaker folders) or audio files/folders")
    parser.add_argument("--checkpoint", required=True, help="VQ-VAE checkpoint directory or bundled name")
    parser.add_argument("--out", required=True,
                        help="token directory to write (an existing one of the same checkpoint is resumed: the "
                             "files it holds are skipped)")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the token directory --out first and tokenize every file again")
    parser.add_argument("--verify", action="store_true",
                        help="when resuming, check each file already tokenized by its content (SHA-256, recorded "
                             "per file) and tokenize it again if it changed; by default a file counts as unchanged "
                             "when its size and modification time are, which misses an edit that keeps both "
                             "(a copy that preserves times, a tool that restores them)")
    parser.add_argument("--format", choices=FORMATS, default="bin",
                        help="bin: one flat tokens.bin (uint16; int32 once --offset + K > 65536) "
                        "+ index (nanoGPT/Megatron); jsonl, parquet: data/train.* with an input_ids "
                        "column, loaded by datasets.load_dataset(OUT) (default: bin)")
    parser.add_argument("--offset", type=int, default=0, help="add N to every code id (to follow a text vocabulary); the vocabulary is N + K")
    parser.add_argument("--dedup", action="store_true", help="merge runs of repeated codes, storing run lengths")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="rows of --chunk-seconds audio encoded at once; short files are packed "
                        "into rows (default: 8)")
    parser.add_argument("--num-workers", type=int, default=1,
                        help="DataLoader processes decoding audio (default: 1; 0: none)")
    parser.add_argument("--num-processes", type=int,
                        help="tokenizing processes on this machine, each writing its own shards "
                        "(default on CPU: one per core, at least 32 files each; on GPUs 1, use "
                        "`accelerate launch --multi_gpu --num_processes N -m vqaudio.tokenize ...`)")
    parser.add_argument("--threads", type=int,
                        help="torch threads per process (default on CPU: 1; processes scale better)")
    parser.add_argument("--chunk-seconds", type=float, default=10.0,
                        help="longest stretch encoded at once; longer files are cut with overlap, "
                        "giving the same codes (default: 10)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="fp32: the codes of model.encode (up to float rounding at near-ties); "
                        "bf16: about 2x faster on AVX512-BF16 CPUs and on GPUs, codes near a boundary "
                        "between two codes may differ (default: fp32)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: GPU if any)")
    parser.add_argument("--shard-files", type=int, default=256, help="files per shard (default: 256)")
    parser.add_argument("--shard-seconds", type=float, default=120.0,
                        help="commit a shard at least this often, in seconds (default: 120)")
    parser.add_argument("--no-progress", "--quiet", dest="progress", action="store_false",
                        help="no progress bar (--quiet is the same)")
    # Set by --num-processes for its worker processes.
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--world-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--no-merge", dest="merge", action="store_false", help=argparse.SUPPRESS)
    parser.add_argument("--summary-json", help=argparse.SUPPRESS)


def run_tokenize(args: argparse.Namespace) -> int:
    """Run ``vqaudio tokenize``; exit status 0, 1 when some files failed (listed in
    failures.tsv), 2 when a tokenizing process failed (the files left are done by a re-run)."""
    try:
        summary = _run_tokenize(args)
    except RuntimeError as exc:
        print(f"vqaudio tokenize: error: {exc}", file=sys.stderr)
        return 2
    if args.summary_json:
        data = {k: v for k, v in asdict(summary).items() if k not in ("out_dir", "metadata")}
        atomic_write_json(args.summary_json, data, indent=None)
    if args.merge and (args.rank or 0) == 0 and summary.metadata:
        meta = summary.metadata
        layout = (f"tokens.bin of {meta['token_dtype']}" if args.format == "bin"
                  else f"input_ids in {meta['files'][0]}; datasets.load_dataset({str(args.out)!r}) loads it")
        print(f"{summary.describe()}\ntokens: {Path(args.out)} (format {args.format}: {layout}; "
              f"vocabulary {meta['vocab_size']} = offset {meta['offset']} + K {meta['codebook_size']})")
    for path, reason in summary.failures[:10]:
        print(f"  failed: {path}: {reason}", file=sys.stderr)
    return 1 if summary.num_failed else 0


def _run_tokenize(args: argparse.Namespace) -> TokenizeSummary:
    return tokenize(
        args.inputs if len(args.inputs) > 1 else args.inputs[0], args.checkpoint, args.out,
        format=args.format, offset=args.offset, dedup=args.dedup, batch_size=args.batch_size,
        num_workers=args.num_workers, num_processes=args.num_processes, chunk_seconds=args.chunk_seconds,
        shard_files=args.shard_files, shard_seconds=args.shard_seconds, precision=args.precision,
        device=args.device, num_threads=args.threads, progress=args.progress, rank=args.rank,
        world_size=args.world_size, merge=args.merge, overwrite=args.overwrite, verify=args.verify,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m vqaudio.tokenize`` / ``accelerate launch -m vqaudio.tokenize``: the same as
    ``vqaudio tokenize`` (error messages, exit statuses and process-group shutdown of
    :func:`vqaudio._command.run_command`), without importing the other commands."""
    from vqaudio._command import run_command

    parser = argparse.ArgumentParser(prog="vqaudio tokenize", description="turn audio files into code sequences")
    add_tokenize_arguments(parser)
    return run_command("tokenize", run_tokenize, parser.parse_args(argv))



def add_detokenize_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``vqaudio detokenize``."""
    parser.add_argument("tokens_dir", metavar="TOKENS_DIR", help="token directory written by `vqaudio tokenize`")
    parser.add_argument("--checkpoint", required=True, help="the VQ-VAE checkpoint that made the tokens")
    parser.add_argument("--out", required=True, help="folder for the WAV files")
    parser.add_argument("--speaker", help="decode every file with this speaker (default: each file's own)")
    parser.add_argument("--limit", type=int, help="decode only the first N files")
    parser.add_argument("--batch-size", type=int,
                        help="files decoded together (default: 4 per CPU core, 64 on a GPU)")
    parser.add_argument("--allow-other-checkpoint", action="store_true",
                        help="decode tokens made by another checkpoint with the same codebook size")
    add_decoding_options(parser, overwrite_help="replace existing WAV files")


def run_detokenize(args: argparse.Namespace) -> int:
    """Run ``vqaudio detokenize``."""
    written = detokenize(args.tokens_dir, args.checkpoint, args.out, speaker=args.speaker,
                         temperature=args.temperature, seed=args.seed, limit=args.limit,
                         overwrite=args.overwrite, allow_other_checkpoint=args.allow_other_checkpoint,
                         method=args.method, batch_size=args.batch_size, progress=not args.no_progress,
                         device=args.device)
    print(f"wrote {len(written)} WAV files to {args.out}")
    return 0

