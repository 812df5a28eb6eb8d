#!/usr/bin/env python
"""What linear prediction costs the compiled decoder: samples per second of ``FastWaveNet``
with and without ``lpc_order`` P, side by side in one process, same weights otherwise.

The decoder is fsdd-8k's size (2 x 10 layers, residual 32 / gate 64 / skip 32, 40 mel bands)
at 8 kHz unless the options say otherwise, with random weights (speed does not depend on
them). The two configs alternate for ``--repeat`` rounds and each keeps its fastest run, so a
load that comes and goes hits both alike; the ratio is the figure to read. The load average is
printed before and after.

    python tools/bench_lpc_decoding.py
    python tools/bench_lpc_decoding.py --lpc-order 16 --sample-rate 16000 --residual-channels 64 \\
        --gate-channels 128 --skip-channels 64 --streams 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from vqaudio.config import DecoderConfig, QuantizerConfig, VQVAEConfig
from vqaudio.model import VQVAE


def build(args: argparse.Namespace, lpc_order: int) -> VQVAE:
    """A random VQ-VAE of the benchmark's decoder size, with ``lpc_order`` (and the mel head
    it needs in both configs, so that only the prediction differs)."""
    torch.manual_seed(0)
    decoder = DecoderConfig(residual_channels=args.residual_channels, gate_channels=args.gate_channels,
                            skip_channels=args.skip_channels, num_speakers=1, mel_loss_weight=1.0,
                            lpc_order=lpc_order)
    return VQVAE(VQVAEConfig(sample_rate=args.sample_rate, quantizer=QuantizerConfig(), decoder=decoder), ["a"]).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lpc-order", type=int, default=10, help="P of the predicting decoder (default 10)")
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--residual-channels", type=int, default=32)
    parser.add_argument("--gate-channels", type=int, default=64)
    parser.add_argument("--skip-channels", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per stream (default 2)")
    parser.add_argument("--streams", type=int, default=1, help="utterances decoded together (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="decoding threads (default 1)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the fastest run of each counts (default 5)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    models = {"plain": build(args, 0), f"lpc {args.lpc_order}": build(args, args.lpc_order)}
    frames = int(args.seconds * args.sample_rate) // 64
    codes = torch.randint(0, 512, (args.streams, frames), generator=torch.Generator().manual_seed(1))
    noise = torch.rand(args.streams, frames * 64, generator=torch.Generator().manual_seed(2))
    for model in models.values():  # compile (or load the cache) and warm up
        model.decode(codes[:, :4], 0, noise=noise[:, : 4 * 64], method="numba", num_threads=args.threads)
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    best = {name: float("inf") for name in models}
    for _ in range(args.repeat):
        for name, model in models.items():
            start = time.perf_counter()
            model.decode(codes, 0, noise=noise, method="numba", num_threads=args.threads)
            best[name] = min(best[name], time.perf_counter() - start)
    samples = args.streams * frames * 64
    rates = {name: samples / seconds for name, seconds in best.items()}
    for name, rate in rates.items():
        rtf = best[name] / (frames * 64 / args.sample_rate)
        print(f"{name:>8}: {rate:,.0f} samples/s ({args.streams} stream(s), {args.threads} thread(s)), RTF {rtf:.3f}")
    plain, lpc = rates["plain"], rates[f"lpc {args.lpc_order}"]
    print(f"linear prediction of order {args.lpc_order}: {lpc / plain:.3f} x the plain decoder's rate")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "samples_per_second": rates, "ratio": lpc / plain,
                       "loadavg": os.getloadavg()[0]}, f, indent=1)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
