#!/usr/bin/env python
"""Sampling speed of the prior, in codes per second, with and without the key/value cache.

Both runs use the same model, seed, batch and number of codes, in one process, so the figures
are comparable. With a trained prior (``--prior DIR``) the model is loaded from it; otherwise a
randomly initialised prior of the given size is timed (speed does not depend on the weights).

    python tools/bench_prior_sampling.py --codes 500 --batch 1
    python tools/bench_prior_sampling.py --prior runs/prior --codes 1000 --batch 4

Prints one line per mode (codes/s counts every sequence of the batch) and the speed-up.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vqaudio.nn.prior import PriorConfig, PriorTransformer


def time_sampling(model: PriorTransformer, batch: int, codes: int, use_cache: bool, seed: int) -> tuple[float, torch.Tensor]:
    """Seconds to sample ``codes`` codes for ``batch`` sequences, and the codes [batch, codes]."""
    speaker = torch.arange(batch) % model.config.num_speakers
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = model.sample(speaker, codes, generator=gen, use_cache=use_cache)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time cached and uncached sampling, print codes/s for each."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", help="a trained prior folder (default: a random prior of the size below)")
    parser.add_argument("--codes", type=int, default=500, help="codes to sample per sequence (default 500)")
    parser.add_argument("--batch", type=int, default=1, help="sequences sampled at once (default 1)")
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads (default 1: one code per step is latency-bound, and on a shared "
        "machine extra threads spin-wait; 0 keeps torch's default)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.prior:
        model = PriorTransformer.from_pretrained(args.prior)
    else:
        torch.manual_seed(args.seed)
        cfg = PriorConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads, max_len=args.max_len, dropout=0.0)
        model = PriorTransformer(cfg, ["speaker"]).eval()
    cfg = model.config
    print(
        f"prior: d_model={cfg.d_model} n_layers={cfg.n_layers} n_heads={cfg.n_heads} max_len={cfg.max_len} "
        f"({model.num_parameters / 1e6:.2f} M parameters); batch={args.batch}, codes={args.codes}, "
        f"threads={torch.get_num_threads()}, device=cpu"
    )
    time_sampling(model, args.batch, min(args.codes, 8), True, args.seed)  # warm-up
    results = {}
    outputs = {}
    for use_cache in (True, False):
        seconds, outputs[use_cache] = time_sampling(model, args.batch, args.codes, use_cache, args.seed)
        rate = args.batch * args.codes / seconds
        name = "with cache" if use_cache else "without cache"
        results[name] = {"seconds": seconds, "codes_per_second": rate}
        print(f"{name:>14}: {rate:10.1f} codes/s  ({args.batch} x {args.codes} codes in {seconds:.2f} s)")
    speedup = results["with cache"]["codes_per_second"] / results["without cache"]["codes_per_second"]
    same = bool(torch.equal(outputs[True], outputs[False]))
    print(f"speed-up from the cache: {speedup:.1f}x; identical samples with the same seed: {same}")
    if args.json:
        payload = {"config": vars(args), "results": results, "speedup": speedup, "identical_samples": same}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)


if __name__ == "__main__":
    main()
