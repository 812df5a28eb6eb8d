"""Quickstart on the bundled FSDD sample: train, tokenize, reconstruct, convert, generate.

    python recipes/quickstart_fsdd.py --out runs/quickstart

Runs on a CPU in a few minutes, offline, on ``samples/fsdd`` (900 clips of the Free Spoken
Digit Dataset, 8 kHz, 6 speakers; takes 0-4 are held out). Each stage is the ``vqaudio``
command a user would type, printed before it runs:

1. ``vqaudio train``: a VQ-VAE at 8 kHz on the training takes (5-14) for ``--max-steps`` steps.
2. ``vqaudio tokenize``: codes of the held-out takes (one code per 64 samples, 125 codes/s).
3. ``vqaudio reconstruct`` / ``vqaudio convert``: one held-out clip per speaker, decoded with
   its own speaker and with the next speaker in the table.
4. ``vqaudio tokenize`` + ``vqaudio train-prior``: a small prior on the training takes' codes.
5. ``vqaudio generate``: a few seconds of speech for two speakers.

A few hundred CPU steps teach the model the speakers' voices and the codebook, not clean
speech: WaveNet decoders need tens of thousands of steps. ``--checkpoint NAME_OR_DIR`` skips
stage 1 and uses an existing checkpoint instead. The run folder is reused on a second call:
finished stages are skipped (training resumes), so an interrupted quickstart can be re-run.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

from vqaudio.data import CorpusError, Utterance, discover_corpus, split_corpus

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "fsdd" / "recordings"


def run(args: list[str]) -> None:
    """Print and run one ``vqaudio`` command; exit with its status if it fails."""
    print("\n$ vqaudio " + " ".join(shlex.quote(a) for a in args), flush=True)
    status = subprocess.call([sys.executable, "-m", "vqaudio.cli", *args])
    if status:
        sys.exit(f"quickstart: `vqaudio {args[0]}` failed with status {status}")


def split_sample(sample: Path) -> tuple[list[Utterance], list[Utterance]]:
    """(training clips, held-out clips) of the FSDD sample by its official split (takes 0-4
    held out: :func:`vqaudio.data.split_corpus`)."""
    try:
        train, heldout = split_corpus(discover_corpus(sample), method="official")
    except CorpusError as exc:
        sys.exit(f"quickstart: {exc}")
    return list(train), list(heldout)


def write_list(path: Path, files: list[Path]) -> str:
    """Write ``files`` one per line to ``path``; returns ``@path``, the CLI's file-list argument."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f}\n" for f in files))
    return f"@{path}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="run folder (default runs/quickstart)")
    parser.add_argument("--max-steps", "--steps", dest="steps", type=int, default=150,
                        help="VQ-VAE training steps (default 150, a few minutes on 2 cores)")
    parser.add_argument("--prior-max-steps", "--prior-steps", dest="prior_steps", type=int, default=300,
                        help="prior training steps (default 300)")
    parser.add_argument("--checkpoint", help="use this VQ-VAE (directory or bundled name) instead of training one")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="folder of FSDD clips (default: the bundled sample)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds generated per speaker (default 2)")
    args = parser.parse_args(argv)

    out: Path = args.out
    train_files, heldout = split_sample(args.sample)

    # 1. the VQ-VAE
    checkpoint = args.checkpoint or str(out / "vqvae")
    if args.checkpoint is None:
        run(["train", str(args.sample), "--out", checkpoint, "--resume", "--sample-rate", "8000",
             "--max-steps", str(args.steps), "--batch-size", "8", "--segment-seconds", "0.5",
             "--learning-rate", "1e-3", "--checkpoint-every", str(args.steps),
             "--valid-every", str(args.steps), "--log-every", "10", "--example-seconds", "1"])

    # 2. codes of the held-out clips
    tokens_heldout = out / "tokens" / "heldout"
    run(["tokenize", write_list(out / "lists" / "heldout.txt", [u.path for u in heldout]), "--checkpoint", checkpoint, "--out", str(tokens_heldout),
         "--format", "jsonl"])

    # 3. one held-out clip per speaker: reconstruction and conversion to the next speaker
    from vqaudio.model import VQVAE

    speakers = VQVAE.from_pretrained(checkpoint).speakers
    first_clip = {}
    for u in heldout:
        first_clip.setdefault(u.speaker, u.path)
    for i, speaker in enumerate(speakers):
        clip = first_clip.get(speaker)
        if clip is None:
            continue
        target = speakers[(i + 1) % len(speakers)]
        recon = out / "reconstructions" / f"{clip.stem}.wav"
        conv = out / "conversions" / f"{clip.stem}_to_{target}.wav"
        if not recon.exists():
            run(["reconstruct", str(clip), "--checkpoint", checkpoint, "--out", str(recon)])
        if not conv.exists():
            run(["convert", str(clip), "--speaker", target, "--checkpoint", checkpoint, "--out", str(conv)])

    # 4. a prior over the training clips' codes
    tokens_train = out / "tokens" / "train"
    prior = out / "prior"
    run(["tokenize", write_list(out / "lists" / "train.txt", [u.path for u in train_files]), "--checkpoint", checkpoint, "--out", str(tokens_train)])
    run(["train-prior", str(tokens_train), "--out", str(prior), "--resume", "--max-steps", str(args.prior_steps),
         "--d-model", "128", "--layers", "4", "--heads", "4", "--valid-every", str(args.prior_steps),
         "--checkpoint-every", str(args.prior_steps)])

    # 5. speech in two voices, sampled from the prior
    generated = out / "generated"
    run(["generate", "--speaker", *speakers[:2], "--seconds", str(args.seconds), "--num", "1",
         "--checkpoint", checkpoint, "--prior", str(prior), "--out", str(generated), "--overwrite"])

    print(f"""
quickstart done: everything is in {out}/
  model           {checkpoint}   (vqaudio ... --checkpoint {checkpoint})
  training        {out / 'vqvae' / 'metrics.jsonl'}, examples in {out / 'vqvae' / 'examples'}
  held-out codes  {tokens_heldout}
  reconstructions {out / 'reconstructions'}
  conversions     {out / 'conversions'}
  prior           {prior}
  generated       {generated}""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
