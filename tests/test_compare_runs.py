"""``tools/compare_runs.py``: learning curves of A/B runs side by side, with what differs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))

import compare_runs  # noqa: E402
from test_train import run_recipe, short_fsdd  # noqa: E402

from vqaudio.runs import read_sessions  # noqa: E402


def test_compare_two_runs(tmp_path: Path, capsys) -> None:
    data, _ = short_fsdd(tmp_path / "fsdd", speakers=("nicolas", "theo"))
    run_recipe(data, tmp_path / "a", "--batch-size", "2", "--segment-seconds", "0.128", "--max-steps", "2",
               "--valid-every", "1", "--log-every", "1", "--example-seconds", "0.02",
               "--split", "per-speaker", "--num-valid-per-speaker", "1")
    a = tmp_path / "a" / "vqvae"
    b = tmp_path / "b"
    shutil.copytree(a, b)  # the B arm: another jitter, and a curve of its own
    config = json.loads((b / "model_config.json").read_text())
    config["decoder"]["time_jitter"] = 0.12
    (b / "model_config.json").write_text(json.dumps(config))
    lines = [json.loads(line) for line in (b / "metrics.jsonl").read_text().splitlines()]
    for r in lines:
        if "valid/bits_per_sample" in r:
            r["valid/bits_per_sample"] = 1.25
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    assert compare_runs.main([str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "| model.decoder.time_jitter | 0.0 | 0.12 |" in out
    assert "model.decoder.residual_channels" not in out  # only what differs
    assert "on 1 x 1 thread(s), max_steps" in out
    rows = [line for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2 and all("1.2500 (" in row for row in rows)
    samples = 2 * 1024  # batch 2 x 0.128 s at 8 kHz (1,024 samples, 16 hops)
    assert f"({2 * samples:.3g}, " in rows[1]
    assert all(row.count("CPU h)") == 2 for row in rows)

    # CPU hours: each session's share of the wall time times its threads
    session = json.loads((b / "sessions.jsonl").read_text().splitlines()[0])
    wall = session["wall_seconds_total"]
    more = dict(session, start_step=2, end_step=4, num_threads=2, wall_seconds_total=wall + 100.0)
    (b / "sessions.jsonl").write_text(json.dumps(session) + "\n" + json.dumps(more) + "\n")
    records = read_sessions(b)
    assert compare_runs.cpu_hours(records, 2, wall) == wall / 3600
    assert abs(compare_runs.cpu_hours(records, 3, wall + 50.0) - (wall + 2 * 50.0) / 3600) < 1e-12
    assert compare_runs.cpu_hours(records, 5, wall + 150.0) is None  # a session still running
    on_gpu = [records[0], dict(more, device="cuda:0")]  # GPU time is not CPU time
    assert compare_runs.cpu_hours(on_gpu, 3, wall + 50.0) == wall / 3600

    assert compare_runs.main([str(a), str(tmp_path / "fsdd")]) == 2
    assert "not a vqaudio training run" in capsys.readouterr().err
