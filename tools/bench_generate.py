#!/usr/bin/env python
"""Speed of WaveNet generation (decoding codes to audio), side by side in one process.

For one decoder config (the default: 2 stacks x 10 layers, residual 64, gate 128, skip 64,
256-way output, receptive field 2047; random weights, as speed does not depend on them) at
16 kHz, it times:

1. **full recomputation**: for every sample, the teacher-forced forward pass over the last
   receptive field (2048 samples, a whole number of code frames) and the logits of its last
   position. A few hundred steps are timed and the rate is extrapolated (it does not depend
   on the position once the window is full).
2. **torch incremental**: ``WaveNet.generate`` (cached per-layer queues, Paine et al. 2016),
   PyTorch dispatching each operator, and ``WaveNet.generate_static`` run eagerly (the same
   recursion arranged for fewer operators; what ``decode(method="torch")`` runs).
3. **compiled, 1 stream, 1 thread**: ``FastWaveNet`` (numba).
4. **compiled, 8 streams, 2 threads**: 8 utterances in one call, 4 per thread; and the same
   8 streams on 1 thread, to separate the gain of batching streams from that of threads.
5. with a CUDA device (``--cuda``, default when one is present): the CUDA-graph path for
   1 and for ``--cuda-streams`` streams.

It also prints the compiled loop's matrix product alone (one layer's shape, weights in cache,
1 and 4 streams) against the whole loop, in GFLOP/s per thread: how close each layout comes to
the matrix kernels' rate, and so how much of a step goes to work outside the matrix products
(gates, sampling) and to reading weights.

Compiled paths report the fastest of ``--repeat`` runs; the torch paths run once. Each line
gives samples per second (all streams together) and the real-time factor (RTF:
generation time / duration of the audio of one stream; below 1 is faster than real time).
The ratios between the paths and the issue's targets follow. The machine's load average is
printed before and after, and each line shows the CPU time the process got (cpu/wall): on a
shared machine other processes take cores and cache, and the figures drop with them.

    python tools/bench_generate.py
    python tools/bench_generate.py --seconds 4 --full-steps 300 --json bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from vqaudio.config import DecoderConfig
from vqaudio.nn.wavenet import SILENCE, WaveNet, sample_from_logits


def timed(fn, repeat: int = 1) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of ``fn()``: the run with the least wall time of
    ``repeat`` runs (other processes on a shared machine only ever slow a run down)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        fn()
        run = (time.perf_counter() - w, time.process_time() - c)
        best = min(best, run)
    return best


def full_recomputation(net: WaveNet, local: torch.Tensor, speaker: torch.Tensor, steps: int) -> None:
    """Generate ``steps`` samples recomputing the receptive field for each (no caching)."""
    hop = net.hop_length
    window = -(-net.receptive_field // hop) * hop  # 2048: whole frames covering the field
    frames = window // hop
    history = torch.full((1, window), SILENCE, dtype=torch.long)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(steps):
            logits = net(history, local[:, :, :frames], speaker)[:, :, -1]
            v = sample_from_logits(logits, torch.rand(1, generator=gen))
            history = torch.cat([history[:, 1:], v[:, None]], dim=1)


def line(name: str, samples: int, audio_seconds: float, wall: float, cpu: float, note: str = "") -> dict:
    """Print and return one result: rate and RTF by wall clock, and the CPU share it got."""
    rate = samples / wall
    rtf = wall / audio_seconds
    print(f"{name:<36} {rate:>12,.0f} {rtf:>10.3f} {cpu / wall:>9.2f} {samples / cpu:>14,.0f}  {note}")
    return {"name": name, "samples_per_second": rate, "rtf": rtf, "wall_s": wall, "cpu_s": cpu,
            "samples_per_cpu_second": samples / cpu, "note": note}


def main(argv: list[str] | None = None) -> int:
    """Time each generation path and print samples/s, RTF and the ratios between them."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sample-rate", type=int, default=16000, help="audio rate in Hz (default 16000)")
    parser.add_argument("--seconds", type=float, default=2.0, help="audio per stream for the compiled paths (default 2)")
    parser.add_argument("--torch-seconds", type=float, default=0.25, help="audio for the torch incremental path (default 0.25)")
    parser.add_argument("--full-steps", type=int, default=200, help="steps timed for full recomputation (default 200)")
    parser.add_argument("--streams", type=int, default=8, help="streams of the multi-stream run (default 8)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the multi-stream run (default 2)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each compiled measurement; the fastest is reported (default 3)")
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch CPU threads for the torch paths (default 1: same core budget as the "
                        "1-thread compiled path; per-sample ops are too small to split)")
    parser.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=None,
                        help="also time the CUDA-graph path (default: when a CUDA device is present)")
    parser.add_argument("--cuda-streams", type=int, default=64, help="streams of the batched CUDA run (default 64)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    from vqaudio.nn.fast_wavenet import FastWaveNet, matrix_kernel_gflops, multiply_adds_per_sample

    torch.set_num_threads(args.torch_threads)
    cfg = DecoderConfig(num_speakers=4)
    hop = 64
    torch.manual_seed(0)
    net = WaveNet(cfg, hop).eval()
    sr = args.sample_rate
    print(f"decoder: {cfg.num_stacks}x{cfg.layers_per_stack} layers, residual {cfg.residual_channels}, "
          f"gate {cfg.gate_channels}, skip {cfg.skip_channels}, {cfg.quantization_channels}-way output, "
          f"kernel {cfg.kernel_size}, receptive field {net.receptive_field}; {sr} Hz")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} (1 min) before; torch threads {args.torch_threads}")
    print(f"{'path':<36} {'samples/s':>12} {'RTF':>10} {'cpu/wall':>9} {'samples/cpu-s':>14}")
    results: dict[str, dict] = {}

    def utterance(seconds: float, seed: int):
        frames = max(1, round(seconds * sr / hop))
        g = torch.Generator().manual_seed(seed)
        return torch.randn(cfg.local_channels, frames, generator=g), torch.rand(frames * hop, generator=g)

    # 1. full recomputation of the receptive field per sample
    local, _ = utterance(1.0, 0)
    spk = torch.tensor([0])
    full_recomputation(net, local[None], spk, 3)  # warm-up
    wall, cpu = timed(lambda: full_recomputation(net, local[None], spk, args.full_steps))
    results["full"] = line("full recomputation", args.full_steps, args.full_steps / sr, wall, cpu,
                           f"({args.full_steps} steps timed, extrapolated)")

    # 2. torch incremental
    local, noise = utterance(args.torch_seconds, 1)
    net.generate(local[None, :, :2], spk, noise=noise[None, : 2 * hop])  # warm-up
    n = noise.numel()
    wall, cpu = timed(lambda: net.generate(local[None], spk, noise=noise[None]))
    results["torch"] = line("torch incremental (reference)", n, n / sr, wall, cpu, f"({n} steps)")
    net.generate_static(local[None, :, :2], spk, noise=noise[None, : 2 * hop])  # warm-up
    wall, cpu = timed(lambda: net.generate_static(local[None], spk, noise=noise[None], cuda_graph=False))
    results["torch_static"] = line("torch incremental (static steps)", n, n / sr, wall, cpu, f"({n} steps)")

    # 3. compiled, one stream, one thread
    fast = FastWaveNet(net)
    local, noise = utterance(args.seconds, 2)
    t0 = time.perf_counter()
    fast.generate([local[:, :2]], [0], [noise[: 2 * hop]], num_threads=1)  # compile or load the cache
    print(f"  (compiled code ready in {time.perf_counter() - t0:.1f} s: numba compile on the first run, cache after)")
    n = noise.numel()
    wall, cpu = timed(lambda: fast.generate([local], [0], [noise], num_threads=1), args.repeat)
    results["compiled_1"] = line("compiled, 1 stream, 1 thread", n, n / sr, wall, cpu)

    # 4. compiled, several streams on several threads
    utts = [utterance(args.seconds, 10 + i) for i in range(args.streams)]
    locs, noises = [u[0] for u in utts], [u[1] for u in utts]
    spks = [i % cfg.num_speakers for i in range(args.streams)]
    wall, cpu = timed(lambda: fast.generate(locs, spks, noises, num_threads=args.threads), args.repeat)
    n = sum(u.numel() for u in noises)
    results["compiled_multi"] = line(f"compiled, {args.streams} streams, {args.threads} threads", n,
                                     noises[0].numel() / sr, wall, cpu, "(RTF per stream)")
    wall, cpu = timed(lambda: fast.generate(locs, spks, noises, num_threads=1), args.repeat)
    results["compiled_multi_1"] = line(f"compiled, {args.streams} streams, 1 thread", n,
                                       noises[0].numel() / sr, wall, cpu, "(RTF per stream)")

    # where the time goes: the matrix products alone against the whole loop, in GFLOP/s
    macs = multiply_adds_per_sample(net)
    print(f"matrix products alone vs the whole loop ({macs:,} multiply-adds per sample):")
    kernels = {}
    for streams in (1, 4):
        kernels[streams] = matrix_kernel_gflops(cfg.residual_channels, cfg.gate_channels, streams)
        print(f"  {cfg.residual_channels} -> {cfg.gate_channels} product alone, {streams} stream(s){'':<8} "
              f"{kernels[streams]:7.1f} GFLOP/s")
    for key, label, threads in (("compiled_1", "1 stream, 1 thread", 1),
                                ("compiled_multi_1", f"{args.streams} streams, 1 thread", 1),
                                ("compiled_multi", f"{args.streams} streams, {args.threads} threads", args.threads)):
        flops = 2 * macs * results[key]["samples_per_second"] / threads / 1e9
        results[key]["gflops_per_thread"] = flops
        print(f"  whole loop, {label:<28} {flops:7.1f} GFLOP/s per thread")

    # 5. CUDA graphs
    use_cuda = torch.cuda.is_available() if args.cuda is None else args.cuda
    if use_cuda:
        if not torch.cuda.is_available():
            raise SystemExit("--cuda given but torch.cuda.is_available() is False")
        gnet = WaveNet(cfg, hop).to("cuda").eval()
        gnet.load_state_dict(net.state_dict())
        for streams in (1, args.cuda_streams):
            local, _ = utterance(args.seconds, 3)
            loc = local[None].repeat(streams, 1, 1).cuda()
            s = torch.arange(streams, device="cuda") % cfg.num_speakers
            gnet.generate_static(loc[:, :, :2], s)  # warm-up
            torch.cuda.synchronize()

            def run():
                gnet.generate_static(loc, s)
                torch.cuda.synchronize()

            wall, cpu = timed(run)
            n = streams * loc.shape[-1] * hop
            results[f"cuda_{streams}"] = line(f"CUDA graphs, {streams} streams", n, loc.shape[-1] * hop / sr, wall, cpu,
                                              f"({torch.cuda.get_device_name()})")
    else:
        print("CUDA graphs: skipped (no CUDA device)")

    load_after = os.getloadavg()[0]
    print(f"load average {load_after:.2f} (1 min) after")
    r = {k: v["samples_per_second"] for k, v in results.items()}
    ratios = {
        "compiled_vs_full": r["compiled_1"] / r["full"],
        "compiled_vs_torch": r["compiled_1"] / r["torch"],
        "compiled_vs_torch_static": r["compiled_1"] / r["torch_static"],
        "torch_vs_full": r["torch"] / r["full"],
        "multi_vs_single": r["compiled_multi"] / r["compiled_1"],
        "multi_threads_vs_multi_1": r["compiled_multi"] / r["compiled_multi_1"],
    }
    print("ratios (samples/s):")
    print(f"  compiled 1 thread / full recomputation : {ratios['compiled_vs_full']:8.1f}x")
    print(f"  compiled 1 thread / torch incremental  : {ratios['compiled_vs_torch']:8.1f}x  "
          f"(/ static steps: {ratios['compiled_vs_torch_static']:.1f}x)")
    print(f"  torch incremental / full recomputation : {ratios['torch_vs_full']:8.1f}x")
    print(f"  {args.streams} streams on {args.threads} threads / 1 stream   : {ratios['multi_vs_single']:8.2f}x")
    print(f"  {args.streams} streams on {args.threads} threads / on 1 thread: {ratios['multi_threads_vs_multi_1']:8.2f}x")
    busy = min(v["cpu_s"] / v["wall_s"] for k, v in results.items() if k != "compiled_multi" and not k.startswith("cuda"))
    if busy < 0.9 or results["compiled_multi"]["cpu_s"] / results["compiled_multi"]["wall_s"] < 0.9 * args.threads:
        print("note: this process got less CPU than it asked for (cpu/wall below the thread count): other "
              "processes share the cores, so the wall-clock figures are lower than on an idle machine; "
              "samples/cpu-s shows the rate per CPU-second actually received")
    targets = {  # judged by wall clock
        "compiled 1 stream 1 thread RTF <= 0.5": results["compiled_1"]["rtf"] <= 0.5,
        "compiled >= 100x full recomputation": ratios["compiled_vs_full"] >= 100,
        f"{args.streams} streams on {args.threads} threads >= 4x one stream": ratios["multi_vs_single"] >= 4,
    }
    print("targets:")
    for name, ok in targets.items():
        print(f"  {'met' if ok else 'NOT met':<8} {name}")
    if args.json:
        payload = {"results": results, "ratios": ratios, "targets": targets, "load_after": load_after,
                   "matrix_kernel_gflops": kernels, "multiply_adds_per_sample": macs,
                   "sample_rate": sr, "torch_threads": args.torch_threads}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
