"""``tools/ship_checkpoint.py``: a run's model shipped as a bundled checkpoint, its stretch
logged with lineage totals, the model card's generated sections rewritten."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from vqaudio.model import VQVAE

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(Path(__file__).parent))

import ship_checkpoint as ship  # noqa: E402
from test_train import run_recipe, short_fsdd  # noqa: E402

COMMON = ["--batch-size", "4", "--segment-seconds", "0.128", "--lr", "3e-3", "--log-every", "1",
          "--example-seconds", "0.02", "--num-valid-per-speaker", "1", "--split", "per-speaker"]


def fake_evaluation(folder: Path, checkpoint_id: str, temperature: float = 1.0) -> Path:
    """A minimal ``vqaudio evaluate`` folder (report.json and report.md) for ``checkpoint_id``,
    decoded at ``temperature``."""
    folder.mkdir(parents=True)
    report = {"checkpoint": {"checkpoint_id": checkpoint_id}, "data": {"clips": 300},
              "settings": {"temperature": temperature},
              "systems": {"codec2-1200": {"digit_accuracy": 0.74, "speaker_identification": 0.62},
                          "vqaudio": {"digit_accuracy": 0.31, "speaker_identification": 0.7, "stoi": 0.66}},
              "conversion": {"identified_as_target": 0.4, "digit_accuracy": 0.25},
              "codebook": {"codebook_usage": 0.85}}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "report.md").write_text("# vqaudio evaluation\n\n## Reconstruction\n\n| table |\n\n## Plots\n\n![x](x.png)\n")
    return folder


def test_ship_two_stretches_of_one_lineage(tmp_path: Path) -> None:
    data, _ = short_fsdd(tmp_path / "fsdd")
    pretrained = tmp_path / "pretrained"
    run1 = tmp_path / "one" / "vqvae"
    run_recipe(data, run1.parent, *COMMON, "--max-steps", "2")
    model1 = VQVAE.from_pretrained(run1)
    evaluation = fake_evaluation(tmp_path / "eval1", model1.checkpoint_id)
    (pretrained / "tiny").mkdir(parents=True)
    (pretrained / "tiny" / "README.md").write_text("# tiny\n\nhand-written\n\n<!-- BEGIN training-log -->\nstale rows\n<!-- END training-log -->\n\ntail\n")

    row = ship.ship(run1, "tiny", evaluation, pretrained_dir=pretrained)
    assert (row["stretch"], row["steps"], row["total_steps"]) == (1, 2, 2)
    assert row["samples"] == 2 * 4 * 1024 and row["init_from"] is None and row["cpu_hours"] > 0
    assert row["scores"]["digit_accuracy"] == 0.31 and row["scores"]["codec2_1200_digit_accuracy"] == 0.74
    assert row["valid_bits_per_sample"] > 0 and row["valid_step"] == 2 and row["intelligibility"] == "digit accuracy"
    logs = pretrained / "tiny" / "logs" / "stretch-01"
    assert (logs / "metrics.jsonl").read_text() == (run1 / "metrics.jsonl").read_text()
    assert (logs / "sessions.jsonl").is_file() and not (logs / "init_from.json").exists()
    shipped = VQVAE.from_pretrained(pretrained / "tiny")
    assert shipped.checkpoint_id == model1.checkpoint_id
    card = (pretrained / "tiny" / "README.md").read_text()
    assert "hand-written" in card and card.rstrip().endswith("<!-- END evaluation -->")
    assert "stale rows" not in card and "| 1 | " in card and "--max-steps 2" in card
    assert "### Reconstruction" in card and "Plots" not in card

    assert "| 1 | 0.31 |" in card and "decoded at temperature 1:" in card

    # shipping the same run again replaces its row; --temperature sets the shipped default,
    # and an evaluation must have decoded at it
    with pytest.raises(ship.ShipError, match="decoded at temperature 1.0"):
        ship.ship(run1, "tiny", evaluation, pretrained_dir=pretrained, temperature=0.5)
    evaluation_05 = fake_evaluation(tmp_path / "eval1-t05", model1.checkpoint_id, temperature=0.5)
    row = ship.ship(run1, "tiny", evaluation_05, pretrained_dir=pretrained, temperature=0.5)
    assert row["stretch"] == 1 and row["decode_temperature"] == 0.5
    assert VQVAE.from_pretrained(pretrained / "tiny").decode_temperature() == 0.5
    assert VQVAE.from_pretrained(run1).decode_temperature() == 1.0  # the run itself is untouched
    card = (pretrained / "tiny" / "README.md").read_text()
    assert "| 0.5 | 0.31 |" in card and "decoded at temperature 0.5:" in card
    # a run that did not start from the shipped weights is refused
    other = tmp_path / "other" / "vqvae"
    run_recipe(data, other.parent, *COMMON, "--max-steps", "1")
    with pytest.raises(ship.ShipError, match="--init-from tiny"):
        ship.ship(other, "tiny", pretrained_dir=pretrained)
    # a run from the shipped weights continues the lineage
    run2 = tmp_path / "two" / "vqvae"
    run_recipe(data, run2.parent, *COMMON, "--max-steps", "3", "--init-from", str(pretrained / "tiny"))
    row2 = ship.ship(run2, "tiny", pretrained_dir=pretrained)
    assert (row2["stretch"], row2["steps"], row2["total_steps"]) == (2, 3, 5)
    assert row2["total_samples"] == 5 * 4 * 1024 and row2["init_from"] == model1.checkpoint_id
    assert row2["decode_temperature"] == 0.5  # inherited from the shipped config by --init-from
    assert len(json.loads((pretrained / "tiny" / "training_log.json").read_text())) == 2
    # evaluation of other weights is refused
    with pytest.raises(ship.ShipError, match="evaluates checkpoint"):
        ship.ship(run2, "tiny", evaluation, pretrained_dir=pretrained)
    # weights over the size limit are refused
    assert ship.main([str(run2), "--name", "tiny", "--max-mb", "0.001"]) == 2


def test_log_of_a_sentence_corpus_reports_word_error_rates(tmp_path: Path) -> None:
    report = {"checkpoint": {"checkpoint_id": "abc"}, "data": {"clips": 120}, "settings": {"temperature": 1.0},
              "systems": {"codec2-3200": {"wer_vs_original": 0.41}, "codec2-1200": {"wer_vs_original": 0.62},
                          "vqaudio": {"wer_vs_original": 0.83, "speaker_identification": 0.9}},
              "conversion": {"identified_as_target": 0.5, "wer_vs_original": 0.88}, "codebook": {"codebook_usage": 0.9}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    scores = ship.evaluation_scores(tmp_path, "abc")
    assert scores["digit_accuracy"] is None and scores["wer_vs_original"] == 0.83
    assert scores["conversion_wer_vs_original"] == 0.88 and scores["codec2_3200_wer_vs_original"] == 0.41
    row = {"stretch": 1, "date": "2026-11-27", "steps": 10, "total_steps": 10, "samples": 1e6, "total_samples": 1e6,
           "cpu_hours": 0.1, "total_cpu_hours": 0.1, "gpu_minutes": 0, "hardware": ["cpu"], "mixed_precision": ["bf16"],
           "valid_bits_per_sample": 4.0, "scores": scores, "commands": []}
    table = ship.render_log([row])
    assert "| WER vs original |" in table and "digit acc" not in table
    assert "| 4.000 | 1 | 0.83 | 0.90 | 0.50 | 0.88 |" in table
    # a stretch not yet scored: the columns still follow the corpus (from the run's data.json)
    assert "| WER vs original |" in ship.render_log([{**row, "scores": None, "intelligibility": "word error rate"}])
    assert "| digit acc |" in ship.render_log([{**row, "scores": None}])
    # a stretch is dated by the end of its last session (UTC), not by the day it was shipped
    assert ship._trained_on({"started_at": "2026-11-27T23:50:00+0000", "session_seconds": 1200}) == "2026-11-28"
    assert ship._trained_on({"started_at": "2026-11-27T20:50:00-0300", "session_seconds": 60}) == "2026-11-27"
