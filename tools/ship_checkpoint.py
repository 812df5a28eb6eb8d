#!/usr/bin/env python
"""Ship a training run's model as a bundled checkpoint and log the stretch of training.

A reference model (``vqaudio/pretrained/NAME/``, e.g. ``fsdd-8k``) is trained in many stretches,
often on different machines: each stretch starts with ``vqaudio train ... --init-from NAME`` (or
continues a run with ``--resume``), and at its end this tool

1. copies the run's exported model (``RUN/model``: ``config.json``, ``model.safetensors``,
   ``speakers.json``) into ``vqaudio/pretrained/NAME/``, refusing weights over ``--max-mb``;
   with ``--temperature T``, the shipped ``config.json`` decodes at T by default
   (``decoder.temperature``: the temperature that scored best with these weights; an
   ``--evaluation`` must have been run at the temperature shipped);
2. appends a row to ``training_log.json`` there: steps, samples seen, CPU hours (wall time x
   threads x processes of every session in ``RUN/sessions.jsonl``) or GPU minutes, hardware,
   validation bits/sample (the run's last ``valid/bits_per_sample``), and, with
   ``--evaluation DIR`` (a ``vqaudio evaluate`` folder of these very weights), the scores of the
   model card: intelligibility (digit accuracy on FSDD, word error rate against the
   recogniser's words on the original audio for sentences) and speaker identification of
   reconstructions, conversions identified as the target and their intelligibility, STOI,
   codebook usage, next to Codec 2's from the same run; and the commands of the sessions;
3. keeps the run's own logs beside the model: ``logs/stretch-NN/`` with its ``metrics.jsonl``
   (the learning curve), ``sessions.jsonl`` and configs (not part of the installed package);
4. rewrites the generated sections of the model card ``README.md`` (between
   ``<!-- BEGIN NAME -->`` and ``<!-- END NAME -->`` markers: ``training-log`` and, with
   ``--evaluation``, ``evaluation``); the rest of the card is hand-written and kept.

Totals run across stretches: a run started ``--init-from`` the shipped weights continues their
lineage. Shipping the same run again (after ``--resume``) replaces its row instead of adding one.
A run that did not start from the shipped weights is refused unless ``--new-lineage`` (which
starts a new log).

    python tools/ship_checkpoint.py runs/fsdd-8k --name fsdd-8k --evaluation runs/eval-fsdd-8k
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vqaudio._files import atomic_path, atomic_write_json, atomic_write_text  # noqa: E402
from vqaudio.checkpoint import CONFIG_NAME, SPEAKERS_NAME, WEIGHTS_NAME  # noqa: E402
from vqaudio.model import PRETRAINED_DIR, file_sha256  # noqa: E402
from vqaudio.runs import SESSIONS_NAME, iter_metric, read_metrics  # noqa: E402
from vqaudio.runs import read_sessions as read_session_records  # noqa: E402
from vqaudio.train import INIT_FROM_NAME, MODEL_DIR  # noqa: E402

LOG_NAME = "training_log.json"
CARD_NAME = "README.md"


class ShipError(Exception):
    """The run cannot be shipped; the message says why."""


def _read_json(path: Path, default: Any = None) -> Any:
    if not path.is_file():
        if default is not None:
            return default
        raise ShipError(f"{path}: missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ShipError(f"{path}: not valid JSON ({exc})") from None


def read_sessions(run: Path) -> list[dict[str, Any]]:
    """The run's ``sessions.jsonl`` records (one per finished ``train`` call), oldest first.

    Raises:
        ShipError: the file is missing.
    """
    path = run / SESSIONS_NAME
    if not path.is_file():
        raise ShipError(f"{path}: missing (the run was made by a vqaudio without session records)")
    return read_session_records(run)


def evaluation_scores(evaluation: Path, checkpoint_id: str, temperature: float | None = None) -> dict[str, Any]:
    """The model card's scores from a ``vqaudio evaluate`` folder of the weights ``checkpoint_id``,
    decoded at ``temperature`` (None: not checked).

    Raises:
        ShipError: no report there, a report of other weights, or of another decoding temperature.
    """
    report = _read_json(evaluation / "report.json")
    evaluated = (report.get("checkpoint") or {}).get("checkpoint_id")
    if evaluated != checkpoint_id:
        raise ShipError(f"{evaluation}: evaluates checkpoint {evaluated}, not the run's model {checkpoint_id}")
    used = (report.get("settings") or {}).get("temperature")
    if temperature is not None and used != temperature:
        raise ShipError(f"{evaluation}: decoded at temperature {used}, but the shipped model decodes at "
                        f"{temperature}; evaluate with --temperature {temperature} (or ship --temperature {used})")
    systems = report["systems"]
    ours = systems.get("vqaudio", {})
    conv = report.get("conversion") or {}
    codebook = report.get("codebook") or {}
    codec2 = systems.get("codec2-1200", {})
    codec2_3200 = systems.get("codec2-3200", {})
    return {
        "clips": report["data"]["clips"],
        "digit_accuracy": ours.get("digit_accuracy"),
        "wer_vs_original": ours.get("wer_vs_original"),
        "speaker_identification": ours.get("speaker_identification"),
        "conversion_identified_as_target": conv.get("identified_as_target"),
        "conversion_digit_accuracy": conv.get("digit_accuracy"),
        "conversion_wer_vs_original": conv.get("wer_vs_original"),
        "stoi": ours.get("stoi"),
        "codebook_usage": codebook.get("codebook_usage"),
        "codec2_1200_digit_accuracy": codec2.get("digit_accuracy"),
        "codec2_1200_wer_vs_original": codec2.get("wer_vs_original"),
        "codec2_1200_speaker_identification": codec2.get("speaker_identification"),
        "codec2_3200_wer_vs_original": codec2_3200.get("wer_vs_original"),
    }


def _trained_on(session: dict[str, Any]) -> str:
    """The date (UTC) a training session ended: its start plus its length; today for records
    without a start time."""
    started = session.get("started_at")
    if not started:
        return time.strftime("%Y-%m-%d")
    end = datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z") + datetime.timedelta(
        seconds=session.get("session_seconds", 0))
    return end.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d")


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder where it lies inside it, else as given: the
    records name no folder of the machine that shipped."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def stretch_row(run: Path, checkpoint_id: str, evaluation: Path | None,
                temperature: float | None = None) -> dict[str, Any]:
    """One training-log row for the run (its own totals; lineage totals are added by :func:`ship`)."""
    sessions = read_sessions(run)
    cpu_hours = sum(s["session_seconds"] * s["num_threads"] * s["num_processes"]
                    for s in sessions if s["device"].startswith("cpu")) / 3600
    gpu_minutes = sum(s["session_seconds"] * s["num_processes"] for s in sessions
                      if not s["device"].startswith("cpu")) / 60
    hardware = sorted({f"{s['cpu_model']} ({s['cores']} cores)" if s["device"].startswith("cpu") else s.get("gpu") or s["device"]
                       for s in sessions})
    valid = list(iter_metric(read_metrics(run), "valid/bits_per_sample"))
    init = _read_json(run / INIT_FROM_NAME, default={})
    layout = _read_json(run / "data.json", default={"layout": None}).get("layout")
    return {
        "date": _trained_on(sessions[-1]),
        "run": _shown_path(run),
        "init_from": init.get("checkpoint_id"),
        "checkpoint_id": checkpoint_id,
        "steps": sessions[-1]["end_step"],
        "samples": sessions[-1]["samples_seen"],
        "cpu_hours": round(cpu_hours, 5),  # 0.02 s: a two-step test run still counts
        "gpu_minutes": round(gpu_minutes, 1),
        "hardware": hardware,
        "mixed_precision": sorted({s["mixed_precision"] for s in sessions}),
        "valid_bits_per_sample": valid[-1][1] if valid else None,
        "valid_step": valid[-1][0] if valid else None,
        "decode_temperature": temperature,
        "scores": evaluation_scores(evaluation, checkpoint_id, temperature) if evaluation else None,
        "intelligibility": "digit accuracy" if layout == "fsdd" else "word error rate",
        "commands": [s.get("argv") for s in sessions],
    }


def ship(run: Path, name: str, evaluation: Path | None = None, new_lineage: bool = False,
         max_mb: float = 8.0, pretrained_dir: Path = PRETRAINED_DIR,
         temperature: float | None = None) -> dict[str, Any]:
    """Copy ``run``'s model into ``pretrained_dir / name``, log the stretch, redraw the card.

    ``temperature`` (None: the run's) is written to the shipped config as its
    ``decoder.temperature``, the default of every decoding command.

    Returns:
        the row written (with the lineage totals).

    Raises:
        ShipError: the run has no exported model, its weights exceed ``max_mb``, it does not
            continue the shipped weights (and ``new_lineage`` is not given), or the evaluation
            is of other weights or of another decoding temperature, or ``temperature`` is negative.
    """
    model_dir = run / MODEL_DIR
    for f in (CONFIG_NAME, WEIGHTS_NAME, SPEAKERS_NAME):
        if not (model_dir / f).is_file():
            raise ShipError(f"{model_dir / f}: missing; is {run} a training run with a checkpoint?")
    size_mb = (model_dir / WEIGHTS_NAME).stat().st_size / 2**20
    if size_mb > max_mb:
        raise ShipError(f"{model_dir / WEIGHTS_NAME}: {size_mb:.1f} MB, over the {max_mb:g} MB limit")
    checkpoint_id = file_sha256(model_dir / WEIGHTS_NAME)[:16]
    config = _read_json(model_dir / CONFIG_NAME)  # {"format_version", "model_type", ..., "config": VQVAEConfig}
    decoder = config["config"]["decoder"]
    if temperature is not None:
        if not (temperature >= 0 and math.isfinite(temperature)):
            raise ShipError(f"--temperature must be a finite number >= 0, got {temperature}")
        decoder["temperature"] = temperature
    temperature = decoder.get("temperature", 1.0)
    row = stretch_row(run, checkpoint_id, evaluation, temperature)

    target = pretrained_dir / name
    log: list[dict[str, Any]] = [] if new_lineage else _read_json(target / LOG_NAME, default=[])
    if log and log[-1]["run"] == row["run"] and log[-1]["init_from"] == row["init_from"]:
        log.pop()  # the same run shipped again after --resume: its row is replaced
    if log:
        shipped = log[-1]["checkpoint_id"]
        if row["init_from"] != shipped:
            raise ShipError(f"{run} started from {row['init_from'] or 'random weights'}, not from the shipped "
                            f"{name} ({shipped}); train with --init-from {name}, or pass --new-lineage")
    before = log[-1] if log else {"total_steps": 0, "total_samples": 0, "total_cpu_hours": 0.0,
                                  "total_gpu_minutes": 0.0}
    row["stretch"] = len(log) + 1
    row["total_steps"] = before["total_steps"] + row["steps"]
    row["total_samples"] = before["total_samples"] + row["samples"]
    row["total_cpu_hours"] = round(before["total_cpu_hours"] + row["cpu_hours"], 5)
    row["total_gpu_minutes"] = round(before["total_gpu_minutes"] + row["gpu_minutes"], 1)
    log.append(row)

    target.mkdir(parents=True, exist_ok=True)
    for f in (WEIGHTS_NAME, SPEAKERS_NAME):
        with atomic_path(target / f) as tmp:
            shutil.copyfile(model_dir / f, tmp)
    atomic_write_json(target / CONFIG_NAME, config)  # last, as the writer does
    logs = target / "logs" / f"stretch-{row['stretch']:02d}"
    for f in ("metrics.jsonl", SESSIONS_NAME, INIT_FROM_NAME, "train_config.json", "model_config.json", "data.json"):
        if (run / f).is_file():
            with atomic_path(logs / f) as tmp:
                shutil.copyfile(run / f, tmp)
    atomic_write_json(target / LOG_NAME, log)
    card = target / CARD_NAME
    text = card.read_text(encoding="utf-8") if card.is_file() else f"# {name}\n"
    text = replace_section(text, "training-log", render_log(log))
    if evaluation is not None:
        text = replace_section(text, "evaluation", render_evaluation(evaluation, row))
    atomic_write_text(card, text)
    return row


def replace_section(text: str, section: str, body: str) -> str:
    """``text`` with the part between ``<!-- BEGIN section -->`` and ``<!-- END section -->``
    replaced by ``body`` (both markers appended at the end when absent)."""
    begin, end = f"<!-- BEGIN {section} -->", f"<!-- END {section} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


def _f(value: Any, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def render_log(log: list[dict[str, Any]]) -> str:
    """The training-log table of the card, one row per stretch; intelligibility is digit accuracy
    (FSDD) or, for sentences, the word error rate against the recogniser's words on the
    original audio. Scores are of reconstructions decoded at the stretch's decode temperature
    (rows shipped before it was recorded: 1)."""
    wer = any((r.get("scores") or {}).get("wer_vs_original") is not None
              or r.get("intelligibility") == "word error rate" for r in log)
    heard, conv_heard = ("WER vs original", "conv. WER vs original") if wer else ("digit acc", "conv. digit acc")
    lines = ["| stretch | date | steps (total) | samples seen (total) | CPU hours (total) | GPU min | hardware | "
             f"valid bits/sample | decode temp. | {heard} | speaker ID | conv. as target | {conv_heard} | STOI | codes used |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in log:
        s = r.get("scores") or {}
        if wer:
            s = {**s, "digit_accuracy": s.get("wer_vs_original"),
                 "conversion_digit_accuracy": s.get("conversion_wer_vs_original")}
        lines.append(
            f"| {r['stretch']} | {r['date']} | {r['steps']:,} ({r['total_steps']:,}) | "
            f"{r['samples']:.3g} ({r['total_samples']:.3g}) | {r['cpu_hours']:.2f} ({r['total_cpu_hours']:.2f}) | "
            f"{r['gpu_minutes']:g} | {'; '.join(r['hardware'])}, {'/'.join(r['mixed_precision'])} | "
            f"{_f(r['valid_bits_per_sample'], '.3f')} | {r.get('decode_temperature', 1.0):g} | "
            f"{_f(s.get('digit_accuracy'))} | "
            f"{_f(s.get('speaker_identification'))} | {_f(s.get('conversion_identified_as_target'))} | "
            f"{_f(s.get('conversion_digit_accuracy'))} | {_f(s.get('stoi'))} | {_f(s.get('codebook_usage'))} |"
        )
    lines += ["", "Commands of the latest stretch:", ""]
    lines += [f"    {_program_name(c)}" for c in log[-1]["commands"] if c]
    return "\n".join(lines)


def _program_name(command: str) -> str:
    """A recorded command line with its program's path shortened to its name."""
    program, _, rest = command.partition(" ")
    return f"{Path(program).name} {rest}".strip()


def render_evaluation(evaluation: Path, row: dict[str, Any]) -> str:
    """The card's evaluation section: the ``report.md`` of ``vqaudio evaluate`` (its tables),
    under the stretch it belongs to; the links to plots and to the listening page are dropped
    (they are not shipped)."""
    report = (evaluation / "report.md").read_text(encoding="utf-8")
    body = report.split("\n", 1)[1] if report.startswith("# ") else report
    body = body.split("\n## Plots", 1)[0].replace("\n## ", "\n### ")
    body = "\n".join(ln for ln in body.splitlines() if not ln.startswith("Listening page"))  # not shipped
    return (f"Stretch {row['stretch']}, checkpoint `{row['checkpoint_id']}` after {row['total_steps']:,} steps "
            f"({row['total_samples']:.3g} samples), decoded at temperature {row.get('decode_temperature', 1.0):g}:"
            f"\n{body}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="training run directory (vqaudio train --out)")
    parser.add_argument("--name", required=True, help="bundled checkpoint name (vqaudio/pretrained/NAME)")
    parser.add_argument("--evaluation", type=Path, help="vqaudio evaluate folder of the run's model: scores")
    parser.add_argument("--new-lineage", action="store_true",
                        help="start a new training log (the run did not start from the shipped weights)")
    parser.add_argument("--max-mb", type=float, default=8.0, help="largest model.safetensors shipped (default 8)")
    parser.add_argument("--temperature", type=float,
                        help="decoding temperature the shipped model uses by default (decoder.temperature; "
                             "default: the run's); --evaluation must be at this temperature")
    args = parser.parse_args(argv)
    try:
        row = ship(args.run, args.name, args.evaluation, args.new_lineage, args.max_mb,
                   temperature=args.temperature)
    except ShipError as exc:
        print(f"ship_checkpoint.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"shipped {args.run} as {args.name} ({row['checkpoint_id']}): stretch {row['stretch']}, "
          f"{row['total_steps']:,} steps, {row['total_samples']:.3g} samples, {row['total_cpu_hours']:.2f} CPU hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
