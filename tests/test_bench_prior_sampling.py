"""``tools/bench_prior_sampling.py``: both priors timed side by side in one run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import bench_prior_sampling  # noqa: E402


def test_bench_times_both_priors_and_writes_the_ratios(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bench.json"
    bench_prior_sampling.main(["--codes", "24", "--batch", "1", "3", "--steps", "2", "4", "--d-model", "32",
                               "--layers", "1", "--heads", "2", "--timesteps", "8", "--repeat", "1",
                               "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "device=cpu" in printed
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["codes"] == 24
    rows = {(r["prior"], r["batch"]) for r in report["results"]}
    for batch in (1, 3):
        assert {("autoregressive, KV cache", batch), ("autoregressive, no cache", batch),
                ("diffusion, 2 steps", batch), ("diffusion, 4 steps", batch),
                ("diffusion, 2 steps, confidence", batch), ("diffusion, 4 steps, confidence", batch)} <= rows
    assert all(r["seconds"] > 0 and r["codes_per_second"] > 0 for r in report["results"])
    # each ratio is the diffusion row's codes/s over the cached autoregressive row's, batch by batch
    for ratio in report["ratios"]:
        base = next(r for r in report["results"] if r["batch"] == ratio["batch"]
                    and r["prior"] == "autoregressive, KV cache")
        row = next(r for r in report["results"] if r["batch"] == ratio["batch"] and r["steps"] == ratio["steps"]
                   and r["sampler"] == ratio["sampler"])
        assert abs(ratio["ratio"] - row["codes_per_second"] / base["codes_per_second"]) < 1e-9
    assert len(report["ratios"]) == 8  # 2 batch sizes x 2 step counts x 2 samplers
