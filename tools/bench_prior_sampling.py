#!/usr/bin/env python
"""Sampling speed of the two priors, in codes per second, side by side in one process.

1. the autoregressive prior (:class:`vqaudio.nn.prior.PriorTransformer`) with its key/value
   cache, and without it (the whole context recomputed at every code);
2. the discrete-diffusion prior (:class:`vqaudio.nn.diffusion_prior.DiffusionPrior`) at each
   ``--steps`` count of reverse steps for the whole utterance, with each ``--sampler``.

Every run samples ``--codes`` codes per sequence (default 4 s at the priors' code rate, 500 at
8 kHz) for each ``--batch`` size, with the same seed. With trained priors (``--prior``,
``--diffusion-prior``) the models are loaded; otherwise randomly initialised priors of one size
are timed (speed does not depend on the weights). Each figure is the fastest of ``--repeat``
runs after a warm-up; codes/s counts every sequence of the batch. ``--device cuda`` times both
priors on the GPU (each run ends with ``torch.cuda.synchronize``), where an autoregressive step is
bound by latency rather than arithmetic.

    python tools/bench_prior_sampling.py
    python tools/bench_prior_sampling.py --prior runs/prior-ar --diffusion-prior runs/prior-diff --batch 1 10
    python tools/bench_prior_sampling.py --prior fsdd-8k-prior --diffusion-prior fsdd-8k-diffusion --device cuda

The last lines give, per batch size and steps count, the diffusion prior's codes/s over the
autoregressive prior's with its cache.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vqaudio._system import default_device
from vqaudio.generate import load_prior
from vqaudio.nn.diffusion_prior import SAMPLERS, DiffusionPrior, DiffusionPriorConfig
from vqaudio.nn.prior import PriorConfig, PriorTransformer


def best_time(fn, repeat: int, device: torch.device) -> float:
    """The least wall time in seconds of ``repeat`` calls of ``fn`` (others on the machine only
    slow a run); on a GPU each call is timed until its kernels have finished."""
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, time both priors, print codes/s and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", help="a trained autoregressive prior: folder or bundled name (default: a random one)")
    parser.add_argument("--diffusion-prior", help="a trained diffusion prior: folder or bundled name (default: a random one)")
    parser.add_argument("--codes", type=int, help="codes per sequence (default: 4 s at the priors' code rate, "
                                                   "else 500)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 10], help="batch sizes (default 1 10)")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 100],
                        help="reverse steps of the diffusion prior (default 10 25 100)")
    parser.add_argument("--sampler", nargs="+", choices=SAMPLERS, default=list(SAMPLERS),
                        help="how the diffusion prior runs its steps (default: both)")
    parser.add_argument("--d-model", type=int, default=128, help="size of the random priors (default: the "
                                                                 "recipe's CPU prior, 128 x 4 layers)")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--timesteps", type=int, default=100, help="T of the random diffusion prior")
    parser.add_argument("--no-uncached", action="store_true", help="skip the autoregressive run without cache")
    parser.add_argument("--repeat", type=int, default=2, help="runs per figure; the fastest counts (default 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1; 0 keeps torch's default)")
    parser.add_argument("--device", help="torch device: cpu, cuda, cuda:1, ... (default: cuda if available, else cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(default_device(args.device))

    torch.manual_seed(args.seed)
    if args.prior:
        ar = load_prior(args.prior)
        if not isinstance(ar, PriorTransformer):
            parser.error(f"--prior {args.prior} is not an autoregressive prior")
    else:
        ar = PriorTransformer(PriorConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                                          max_len=1024, dropout=0.0), ["speaker"]).eval()
    if args.diffusion_prior:
        diffusion = load_prior(args.diffusion_prior)
        if not isinstance(diffusion, DiffusionPrior):
            parser.error(f"--diffusion-prior {args.diffusion_prior} is not a diffusion prior")
    else:
        diffusion = DiffusionPrior(DiffusionPriorConfig(d_model=args.d_model, n_layers=args.layers, n_heads=args.heads,
                                                        max_len=1024, dropout=0.0, num_timesteps=args.timesteps),
                                   ["speaker"]).eval()
    ar, diffusion = ar.to(device), diffusion.to(device)
    rate = ar.metadata.get("codes_per_second") or diffusion.metadata.get("codes_per_second")
    codes = args.codes or (round(4 * rate) if rate else 500)
    if codes > diffusion.config.max_len:
        parser.error(f"--codes {codes} exceeds the diffusion prior's max_len={diffusion.config.max_len}")
    for name, m in (("autoregressive", ar), ("diffusion", diffusion)):
        c = m.config
        print(f"{name} prior: d_model={c.d_model} n_layers={c.n_layers} n_heads={c.n_heads} max_len={c.max_len} "
              f"({m.num_parameters / 1e6:.2f} M parameters)" + (f", T={c.num_timesteps}" if name == "diffusion" else ""))
    print(f"{codes} codes per sequence" + (f" ({codes / rate:.2f} s at {rate:g} codes/s)" if rate else "")
          + f"; threads={torch.get_num_threads()}, device={device}, fastest of {args.repeat}")

    def run(model, batch: int, **kw):
        speaker = torch.arange(batch, device=device) % model.config.num_speakers
        return lambda: model.sample(speaker, codes, generator=torch.Generator(device).manual_seed(args.seed), **kw)

    for batch in args.batch:  # warm-up: kernels built for each shape before any timing
        run(ar, batch)()
        run(diffusion, batch, steps=2)()
    results: list[dict] = []
    print(f"{'prior':<38}{'batch':>6}{'seconds':>10}{'codes/s':>12}")
    for batch in args.batch:
        rows = [("autoregressive, KV cache", ar, {})]
        if not args.no_uncached:
            rows.append(("autoregressive, no cache", ar, {"use_cache": False}))
        rows += [(f"diffusion, {s} steps" + ("" if sampler == "posterior" else f", {sampler}"), diffusion,
                  {"steps": s, "sampler": sampler}) for sampler in args.sampler for s in args.steps]
        for label, model, kw in rows:
            seconds = best_time(run(model, batch, **kw), args.repeat, device)
            results.append({"prior": label, "batch": batch, "steps": kw.get("steps"), "sampler": kw.get("sampler"),
                            "seconds": seconds, "codes_per_second": batch * codes / seconds})
            print(f"{label:<38}{batch:>6}{seconds:>10.3f}{batch * codes / seconds:>12.0f}")
    ratios = []
    for batch in args.batch:
        base = next(r for r in results if r["batch"] == batch and r["prior"] == "autoregressive, KV cache")
        for r in results:
            if r["batch"] == batch and r["steps"] is not None:
                ratio = r["codes_per_second"] / base["codes_per_second"]
                ratios.append({"batch": batch, "steps": r["steps"], "sampler": r["sampler"], "ratio": ratio})
                print(f"batch {batch}, {codes} codes: diffusion prior at {r['steps']} steps ({r['sampler']}) "
                      f"{ratio:.2f}x the codes/s of the autoregressive prior with its cache")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args), "device": str(device), "codes": codes, "results": results,
                       "ratios": ratios}, f, indent=2)


if __name__ == "__main__":
    main()
