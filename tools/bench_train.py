#!/usr/bin/env python
"""Speed of a whole VQ-VAE training step, side by side in one run.

One training step is what ``vqaudio train`` does per batch: encoder, quantizer (with its EMA
update), WaveNet decoder, cross-entropy and commitment loss, backward, gradient clipping and
the Adam step. This script times it for the default model (``VQVAEConfig()``: encoder 32..256,
K = 512, WaveNet 2 x 10 layers, 64/128/64) at 8 and 16 kHz, batch 8 x 0.5 s (``--batch-size``,
``--segment-seconds``), in these settings:

* ``fp32 conv1d``: float32, the WaveNet through its Conv1d modules on [B, C, T] activations
  (``WaveNet.forward_channels_first``, how vqaudio trained before): the reference of every ratio;
* ``bf16 conv1d``: the same under ``torch.autocast`` with bfloat16;
* ``fp32 time-major`` / ``bf16 time-major``: the WaveNet as ``vqaudio train`` runs it now
  (``WaveNet.forward_time_major``: [B, T, C] activations, each dilated conv one matrix product
  of the concatenated taps), in float32 and under bf16 autocast (``--mixed-precision auto``
  on a CPU with AVX512-BF16 or AMX);
* ``bf16 compile``: bf16 time-major with the decoder compiled by ``torch.compile``;

each on 1 and 2 threads. Every setting runs in its own subprocess (so its peak memory is its
own and its threads are set before torch starts), on the same random audio: ``--warmup`` steps
(compilation included), then the fastest of ``--repeat`` timings of ``--steps`` steps each.

It prints samples/s (audio samples at the model rate, all segments of a batch), the ratio to
fp32 conv1d on 1 thread at the same rate, the per-core ratio (samples/s per thread over fp32
conv1d's on 1 thread), the 2-thread scaling of each setting, and the peak resident memory of its
process. The last line reads ``per-core speed-up over fp32 eager: N.NNx (SETTING)`` for the
best setting at 16 kHz, against fp32 conv1d (fp32 eager as vqaudio trained before). The
machine's load average is printed before and after: on a shared machine the figures drop
(a training run beside it takes the cores).

    python tools/bench_train.py
    python tools/bench_train.py --rates 8000 --settings "bf16 conv1d,bf16 time-major" --steps 10
    python tools/bench_train.py --residual-channels 32 --gate-channels 64 --skip-channels 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ("fp32 conv1d", "bf16 conv1d", "fp32 time-major", "bf16 time-major", "bf16 compile")
REFERENCE = "fp32 conv1d"


def worker(args: argparse.Namespace) -> dict:
    """Time one setting in this process; returns the measurement."""
    import resource

    import torch

    sys.path.insert(0, str(REPO))
    from vqaudio.config import VQVAEConfig
    from vqaudio.model import VQVAE
    from vqaudio.train import build_model_config

    torch.set_num_threads(args.threads)
    precision, mode = args.setting.split()
    cfg = build_model_config(VQVAEConfig(), sample_rate=args.rate, residual_channels=args.residual_channels,
                             gate_channels=args.gate_channels, skip_channels=args.skip_channels, num_speakers=6)
    torch.manual_seed(0)
    model = VQVAE(cfg, [f"s{i}" for i in range(6)]).train()
    decoder = model.decoder
    if mode == "conv1d":  # the Conv1d layout, returned time-major as VQVAE.forward takes it
        decoder.forward_time_major = lambda i, l, s: decoder.forward_channels_first(i, l, s).transpose(1, 2)
    if mode == "compile":  # VQVAE.forward calls forward_time_major
        decoder.forward_time_major = torch.compile(decoder.forward_time_major, dynamic=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    hop = cfg.hop_length
    length = max(1, round(args.segment_seconds * args.rate / hop)) * hop
    generator = torch.Generator().manual_seed(1)
    wav = (0.1 * torch.randn(args.batch_size, 1, length, generator=generator)).clamp(-1, 1)
    speaker = torch.arange(args.batch_size) % 6
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> float:
        with autocast:
            out = model(wav, speaker)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    started = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    warmup_s = time.perf_counter() - started
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
        best = min(best, time.perf_counter() - t)
    return {
        "setting": args.setting, "rate": args.rate, "threads": args.threads,
        "samples_per_second": args.batch_size * length * args.steps / best,
        "step_ms": 1000 * best / args.steps, "warmup_s": warmup_s, "loss": loss,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_setting(args: argparse.Namespace, setting: str, rate: int, threads: int) -> dict:
    """Run :func:`worker` in a subprocess with ``threads`` threads; returns its measurement."""
    cmd = [sys.executable, __file__, "--worker", "--setting", setting, "--rate", str(rate), "--threads", str(threads),
           "--batch-size", str(args.batch_size), "--segment-seconds", str(args.segment_seconds),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeat", str(args.repeat),
           "--residual-channels", str(args.residual_channels), "--gate-channels", str(args.gate_channels),
           "--skip-channels", str(args.skip_channels)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"setting": setting, "rate": rate, "threads": threads, "error": proc.stderr.strip().splitlines()[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="8000,16000", help="sample rates, comma separated (default 8000,16000)")
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"comma separated, of: {', '.join(SETTINGS)}")
    parser.add_argument("--threads-list", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--segment-seconds", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=8, help="steps per timing (default 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first, compilation included (default 3)")
    parser.add_argument("--repeat", type=int, default=3, help="timings per setting; the fastest counts (default 3)")
    parser.add_argument("--residual-channels", type=int, default=64)
    parser.add_argument("--gate-channels", type=int, default=128)
    parser.add_argument("--skip-channels", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    if REFERENCE not in settings:
        settings.insert(0, REFERENCE)  # the reference of every ratio
    rates = [int(r) for r in args.rates.split(",")]
    thread_counts = [int(t) for t in args.threads_list.split(",")]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"model: default VQ-VAE, WaveNet {args.residual_channels}/{args.gate_channels}/{args.skip_channels}; "
          f"batch {args.batch_size} x {args.segment_seconds:g} s; fastest of {args.repeat} x {args.steps} steps "
          f"after {args.warmup} warm-up steps")
    results = []
    for rate in rates:
        for setting in settings:
            for threads in thread_counts:
                r = run_setting(args, setting, rate, threads)
                results.append(r)
                if "error" in r:
                    print(f"{rate:>6} Hz  {setting:<16} {threads} thread(s): failed: {r['error']}", flush=True)
    print()
    print(f"{'rate':>6}  {'setting':<16} {'threads':>7} {'samples/s':>11} {'ms/step':>8} {'vs ref 1t':>10} "
          f"{'per core':>8} {'2t/1t':>6} {'peak MiB':>8} {'warm-up s':>9}")
    best = None
    for rate in rates:
        ref = next((r for r in results if r["rate"] == rate and r["setting"] == REFERENCE
                    and r["threads"] == 1 and "error" not in r), None)
        for r in results:
            if r["rate"] != rate or "error" in r:
                continue
            one = next((o for o in results if o["rate"] == rate and o["setting"] == r["setting"]
                        and o["threads"] == 1 and "error" not in o), None)
            ratio = r["samples_per_second"] / ref["samples_per_second"] if ref else float("nan")
            per_core = ratio / r["threads"]
            scaling = r["samples_per_second"] / one["samples_per_second"] if one else float("nan")
            r.update(ratio_to_reference_1_thread=ratio, per_core_ratio=per_core, scaling_over_1_thread=scaling)
            print(f"{rate:>6}  {r['setting']:<16} {r['threads']:>7} {r['samples_per_second']:>11,.0f} "
                  f"{r['step_ms']:>8.1f} {ratio:>9.2f}x {per_core:>7.2f}x {scaling:>5.2f}x "
                  f"{r['peak_rss_mib']:>8.0f} {r['warmup_s']:>9.1f}")
            if rate == max(rates) and per_core == per_core and (best is None or per_core > best[0]):
                best = (per_core, f"{r['setting']}, {r['threads']} thread(s), {rate} Hz")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"reference: {REFERENCE} on 1 thread (fp32 eager as vqaudio trained before)")
    print("targets: per-core speed-up >= 1.8x fp32 eager; 2 threads >= 1.7x one thread")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if best is not None:
        print(f"per-core speed-up over fp32 eager: {best[0]:.2f}x ({best[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
