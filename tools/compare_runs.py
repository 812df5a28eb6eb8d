"""Print the learning curves of several `vqaudio train` runs side by side, for A/Bs.

    python tools/compare_runs.py runs/ab-plain runs/ab-cond [--metric valid/bits_per_sample]

First the settings in which the runs differ (model and training config, flattened: the
options an A/B changed) and each run's sessions (threads, stop reason; from ``sessions.jsonl``),
then one row per logged step that any run has: each run's value of the metric at that step,
its samples seen, its wall-clock hours of training so far (``wall_seconds`` in
``metrics.jsonl``) and its CPU hours (that wall time times each finished session's threads x
processes, from ``sessions.jsonl``), so runs are compared at equal steps and at equal CPU time.
A run still training shows what it has so far (without CPU hours for its running session).

Exit status 2 with a one-line error naming the run when a directory is not a training run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vqaudio.runs import flat_config, iter_metric, read_metrics, read_sessions
from vqaudio.train import read_run_configs


def run_settings(run: Path) -> dict[str, Any]:
    """The run's training and model configs, flattened to ``train.`` / ``model.`` keys."""
    model, train, _ = read_run_configs(run)
    return flat_config(train, model)


def sessions(run: Path) -> str:
    """One line on the run's finished sessions: threads and why each stopped."""
    records = read_sessions(run)
    done = [f"steps {s.get('start_step', 0)}-{s.get('end_step', '?')} on {s.get('num_processes', 1)} x "
            f"{s.get('num_threads', '?')} thread(s), {s.get('stopped', '?')}" for s in records]
    return "; ".join(done) or "no finished session (still training, or stopped without its record)"


def cpu_hours(records: list[dict[str, Any]], step: int, wall_seconds: float) -> float | None:
    """CPU hours spent up to ``step``, logged at ``wall_seconds`` of training wall time.

    Each finished CPU session (``records``, from :func:`vqaudio.runs.read_sessions`) counts its
    share of the training wall time times its threads x processes, so arms run on different
    thread counts compare at equal CPU time; GPU sessions count none (``ship_checkpoint`` counts
    them in GPU minutes). ``None`` for a step of a session still running (its threads are
    recorded at its end) or where a record lacks the fields.
    """
    spent, wall_before = 0.0, 0.0
    for s in records:
        try:
            start, end, wall_after = s["start_step"], s["end_step"], s["wall_seconds_total"]
            cpu = s.get("device", "cpu").startswith("cpu")
            cores = s["num_threads"] * s.get("num_processes", 1) if cpu else 0
        except (KeyError, TypeError, AttributeError):
            return None
        if start < step <= end:
            return (spent + (wall_seconds - wall_before) * cores) / 3600
        spent += (wall_after - wall_before) * cores
        wall_before = wall_after
    return None


def curve(run: Path, metric: str) -> dict[int, tuple[float, int, float | None, float | None]]:
    """step -> (metric value, samples seen, wall-clock hours, CPU hours) for every step the run
    logged ``metric``."""
    records = read_metrics(run)
    model, train, _ = read_run_configs(run)
    samples_per_step = (train.batch_size * train.gradient_accumulation_steps
                        * train.segment_length(model.sample_rate, model.hop_length))
    wall = {r["step"]: r["wall_seconds"] for r in records if "wall_seconds" in r}
    finished = read_sessions(run)
    out = {}
    for step, value in iter_metric(records, metric):
        known = [s for s in wall if s <= step]
        if known:
            seconds = wall[max(known)]
            out[step] = (value, step * samples_per_step, seconds / 3600, cpu_hours(finished, step, seconds))
        else:
            out[step] = (value, step * samples_per_step, None, None)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="training run directories (vqaudio train --out)")
    parser.add_argument("--metric", default="valid/bits_per_sample", help="metrics.jsonl key (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        settings = [run_settings(run) for run in args.runs]
    except (OSError, ValueError) as e:
        print(f"error: not a vqaudio training run: {e}", file=sys.stderr)
        return 2
    keys = sorted(set().union(*settings))
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in settings}) > 1]
    names = [run.name for run in args.runs]
    if differ:
        print("| setting | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for k in differ:
            print(f"| {k} | " + " | ".join(str(s.get(k, "-")) for s in settings) + " |")
        print()
    for run in args.runs:
        print(f"- {run.name}: {sessions(run)}")
    print()
    curves = [curve(run, args.metric) for run in args.runs]
    steps = sorted(set().union(*curves))
    print("| step | " + " | ".join(f"{n}: {args.metric} (samples, wall h, CPU h)" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for step in steps:
        cells = []
        for c in curves:
            if step not in c:
                cells.append("-")
                continue
            value, samples, hours, cpu = c[step]
            cells.append(f"{value:.4f} ({samples:.3g}" + (f", {hours:.2f} h" if hours is not None else "")
                         + (f", {cpu:.2f} CPU h)" if cpu is not None else ")"))
        print(f"| {step:,} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
