"""Benchmark ``vqaudio tokenize``: x real time of the plain loop, the pipeline and the encoder alone.

Tokenizes the same real 16 kHz speech (default: ``../shared/data/vcc2016/train``) with the
default-sized encoder (random weights: speed does not depend on training; the codebook is
initialised from latents of the data, as training does, so that code agreement means
something) and prints, in one run:

- ``vqaudio tokenize`` as a user runs it, with its default options, timed from the
  interpreter's start to its exit (the issue's end-to-end figure; the target is 200x);
- the plain per-file loop: ``load_audio`` + ``model.encode`` per file;
- the pipeline (``vqaudio.tokenize.tokenize``, end to end: file discovery, model loading,
  decoding, encoding, shards, merge into ``tokens.bin``) in several process/thread layouts
  and precisions;
- the encoder alone on audio already in memory (padded batches, as the pipeline runs it);
- agreement of the pipeline's codes with ``model.encode`` (fp32) and of bf16 with fp32;
- peak memory (RSS of the whole process tree) tokenizing one synthetic long file of two
  lengths, to show it is flat in the file's length.

Each figure is given as x real time of wall time and per CPU-second (audio seconds per second
of CPU time used by all the processes involved), with the 1-minute load average: other jobs
share the cores, and the CPU-time figure is the one that does not depend on them. The
kernel's share of the CPU time and the minor page faults show the cost of memory handed back
to the kernel and faulted in again (see ``vqaudio._system.retain_freed_memory``). Usage::

    python tools/bench_tokenize.py                      # all 1,620 files, 6 and 60 minute files
    python tools/bench_tokenize.py --limit 240          # 240 files spread over the corpus
    python tools/bench_tokenize.py --long-minutes       # skip the memory test
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from vqaudio.audio import find_audio_files, load_audio
from vqaudio.config import VQVAEConfig
from vqaudio.model import VQVAE
from vqaudio.nn.encoder import PaddedEncoder
from vqaudio.tokenize import auto_num_processes, tokenize
from vqaudio.tokens import read_tokens

REPO = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 16000


def load() -> str:
    """The 1-minute load average and the number of cores, for the record."""
    return f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def bf16_cpu() -> bool:
    """Does this CPU have native bfloat16 dot products (AVX512-BF16 or AMX)?"""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def make_model(files: list[Path], seed: int = 0) -> VQVAE:
    """Default-sized VQ-VAE at 16 kHz, random weights, codebook from latents of ``files``.

    The encoder's convolutions get variance-preserving (He) initialisation: with PyTorch's
    default one, activations shrink layer by layer until all latents nearly coincide, and
    code agreement figures would measure float rounding of near-ties, not the pipeline. As
    training does, the codebook starts from encoder outputs (distinct frames of real speech,
    plus noise of 5% of the latents' spread so that no two codes coincide). Speed does not
    depend on the weights.
    """
    torch.manual_seed(seed)
    model = VQVAE(VQVAEConfig(sample_rate=SAMPLE_RATE), ["speaker"]).eval()
    k = model.config.quantizer.codebook_size
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.Conv1d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        latents = [model.encoder(torch.from_numpy(load_audio(f, SAMPLE_RATE)[None, None, : 64 * 256]))
                   for f in files[:16]]
        flat = torch.cat([z[0].t() for z in latents])
        pick = flat[torch.randperm(flat.shape[0])[:k]]
        model.quantizer.codebook.copy_(pick + 0.05 * flat.std(0) * torch.randn_like(pick))
    return model


class Clock:
    """Wall time, CPU time, kernel (system) CPU time and minor page faults of a block, counting
    this process and its finished children."""

    def __enter__(self) -> "Clock":
        self.wall0, (self.cpu0, self.sys0, self.faults0) = time.perf_counter(), self._usage()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        cpu, system, faults = self._usage()
        self.cpu, self.sys, self.faults = cpu - self.cpu0, system - self.sys0, faults - self.faults0

    @staticmethod
    def _usage() -> tuple[float, float, int]:
        import resource

        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        system = a.ru_stime + b.ru_stime
        return a.ru_utime + b.ru_utime + system, system, a.ru_minflt + b.ru_minflt


def plain_loop(model: VQVAE, files: list[Path], threads: int) -> tuple[float, Clock, dict[str, np.ndarray]]:
    """load_audio + model.encode per file -> (audio seconds, clock, codes by file name)."""
    torch.set_num_threads(threads)
    codes, seconds = {}, 0.0
    with Clock() as clock:
        for f in files:
            wav = load_audio(f, SAMPLE_RATE)
            seconds += wav.size / SAMPLE_RATE
            codes[f"{f.parent.name}/{f.name}"] = model.encode(torch.from_numpy(wav)[None, None])[0].numpy()
    return seconds, clock, codes


def encoder_alone(model: VQVAE, wavs: list[np.ndarray], precision: str, threads: int, batch_size: int) -> tuple[float, Clock]:
    """PaddedEncoder on length-sorted padded batches of audio in memory -> (audio seconds, clock)."""
    torch.set_num_threads(threads)
    encoder = PaddedEncoder(model.encoder, model.quantizer, precision)
    wavs = sorted(wavs, key=len, reverse=True)
    batches = []
    for i in range(0, len(wavs), batch_size):
        group = wavs[i : i + batch_size]
        lengths = [(w.size // 64) * 64 for w in group]
        x = torch.zeros(len(group), 1, max(lengths))
        for b, (w, n) in enumerate(zip(group, lengths)):
            x[b, 0, :n] = torch.from_numpy(w[:n])
        batches.append((x, lengths))
    encoder(*batches[-1])  # warm-up
    with Clock() as clock:
        for x, lengths in batches:
            encoder(x.clone(), lengths)
    return sum(w.size for w in wavs) / SAMPLE_RATE, clock


def peak_memory_of(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run ``cmd`` -> (peak RSS of its largest process in MiB, exact from the kernel's
    ``ru_maxrss``; peak PSS of its whole process tree in MiB, sampled every 0.1 s; wall seconds).

    PSS counts pages shared between the process and its DataLoader worker (torch's
    libraries) once, which a sum of RSS would count twice.
    """
    import psutil

    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, *cmd], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = root.children(recursive=True)
                peak = max(peak, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    t0 = time.perf_counter()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err}")
    return int(out.split()[-1]) / 1024, peak / 2**20, time.perf_counter() - t0


def write_long_file(path: Path, files: list[Path], minutes: float) -> None:
    """A ``minutes``-long 16 kHz WAV of the clips repeated, written block by block."""
    need = int(minutes * 60 * SAMPLE_RATE)
    with sf.SoundFile(str(path), "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        i = 0
        while need > 0:
            wav = load_audio(files[i % len(files)], SAMPLE_RATE)[:need]
            out.write(wav)
            need -= wav.size
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "vcc2016" / "train",
                        help="folder of 16 kHz speech (default: ../shared/data/vcc2016/train)")
    parser.add_argument("--limit", type=int, default=0,
                        help="files to use, spread over the folder (default 0: all; fewer files make the "
                        "fixed start-up cost of the command a larger share)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--long-minutes", type=float, nargs="*", default=[6.0, 60.0],
                        help="lengths of the synthetic long files for the memory test (none: skip)")
    args = parser.parse_args()

    files = find_audio_files(args.data)
    if not files:
        sys.exit(f"no audio files in {args.data}")
    if args.limit and args.limit < len(files):
        files = [files[i] for i in np.linspace(0, len(files) - 1, args.limit).round().astype(int)]
    print(f"# bench_tokenize: {len(files)} files of {args.data}; torch {torch.__version__}, "
          f"{os.cpu_count()} cores, native bf16: {bf16_cpu()}; {load()}")
    model = make_model(files)
    tmp = Path(tempfile.mkdtemp(prefix="bench_tokenize_"))
    try:
        ckpt = model.save_pretrained(tmp / "model")
        model = VQVAE.from_pretrained(ckpt)
        print(f"{'x real time':<62} {'wall':>9} {'per CPU-s':>10} {'kernel':>7} {'faults':>9}  load during")

        def report(name: str, seconds: float, clock: Clock) -> None:
            print(f"{name:<62} {seconds / clock.wall:8.1f}x {seconds / clock.cpu:9.1f}x "
                  f"{clock.sys / clock.cpu:7.1%} {clock.faults:9,d}  {os.getloadavg()[0]:.2f}", flush=True)

        # What a user runs: the command with its defaults, timed from the interpreter's start
        # to its exit (imports, model loading, decoding, encoding, shards, merge).
        out = tmp / "cli"
        listed = [str(args.data)] if len(files) == len(find_audio_files(args.data)) else [str(f) for f in files]
        with Clock() as clock:
            subprocess.run([sys.executable, "-m", "vqaudio.tokenize", *listed, "--checkpoint", str(ckpt),
                            "--out", str(out), "--format", "bin", "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
        cli_seconds = sum(e.duration for e in read_tokens(out).entries)
        report(f"vqaudio tokenize, defaults ({auto_num_processes(len(files))} processes), end to end",
               cli_seconds, clock)

        seconds, clock, reference = plain_loop(model, files, threads=1)
        report("plain per-file loop (load_audio + encode), 1 thread", seconds, clock)
        seconds, clock, _ = plain_loop(model, files, threads=2)
        report("plain per-file loop (load_audio + encode), 2 threads", seconds, clock)

        layouts = [
            ("pipeline: 1 process, 2 threads, 1 decode worker, fp32", dict(num_threads=2, num_workers=1)),
            ("pipeline: 1 process, 1 thread, 1 decode worker, fp32", dict(num_threads=1, num_workers=1)),
            ("pipeline: 2 processes x 1 thread, fp32", dict(num_processes=2, num_workers=0)),
            ("pipeline: 2 processes x 1 thread, bf16", dict(num_processes=2, num_workers=0, precision="bf16")),
        ]
        outputs = {}
        for name, opts in layouts:
            out = tmp / f"out{len(outputs)}"
            with Clock() as clock:
                summary = tokenize([str(f) for f in files], str(ckpt), out, batch_size=args.batch_size,
                                   progress=False, **opts)
            report(name, summary.audio_seconds, clock)
            outputs[name] = {"/".join(Path(e.path).parts[-2:]): e.codes for e in read_tokens(out)}

        torch.set_num_threads(1)
        wavs = [load_audio(f, SAMPLE_RATE) for f in files]
        for precision in ("fp32", "bf16"):
            for threads in (1, 2):
                report(f"encoder alone (in memory), {precision}, {threads} thread(s)",
                       *encoder_alone(model, wavs, precision, threads, args.batch_size))

        def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str:
            same = sum(int((a[k] == b[k]).sum()) for k in a)
            total = sum(a[k].size for k in a)
            return f"{same / total:.6%} of {total} codes"

        fp32 = outputs[layouts[2][0]]
        bf16 = outputs[layouts[3][0]]
        out = tmp / "chunked"
        tokenize([str(f) for f in files], str(ckpt), out, chunk_seconds=0.5, progress=False, num_workers=0)
        chunked = {"/".join(Path(e.path).parts[-2:]): e.codes for e in read_tokens(out)}
        print(f"codes: pipeline fp32 = model.encode per file for {agreement(fp32, reference)}")
        print(f"codes: pipeline fp32 in 0.5 s pieces = whole files for {agreement(chunked, fp32)}")
        print(f"codes: pipeline bf16 = fp32 for {agreement(bf16, fp32)}")

        if args.long_minutes:
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            for minutes in args.long_minutes:
                path = tmp / f"long{minutes:g}.wav"
                write_long_file(path, files, minutes)
                out = tmp / f"long{minutes:g}"
                cmd = [sys.executable, "-m", "vqaudio.tokenize", str(path), "--checkpoint", str(ckpt),
                       "--out", str(out), "--no-progress", "--num-workers", "1", "--threads", "1",
                       "--batch-size", str(args.batch_size)]
                maxrss, pss, wall = peak_memory_of(cmd, env)
                (entry,) = read_tokens(out).entries
                assert entry.codes.size == sf.info(str(path)).frames // 64
                print(f"long file {minutes:g} min ({path.stat().st_size / 2**20:.0f} MiB WAV): peak RSS "
                      f"{maxrss:.0f} MiB (tokenizing process), peak PSS {pss:.0f} MiB (with its decode "
                      f"worker), {minutes * 60 / wall:.1f}x real time, {entry.codes.size} codes   ({load()})",
                      flush=True)
                path.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
