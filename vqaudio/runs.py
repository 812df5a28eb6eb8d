"""What both trainers (:mod:`vqaudio.train`, the VQ-VAE; :mod:`vqaudio.prior_train`, the
priors) share about a training run directory, so that a run of either reads and resumes alike.

``RUN/checkpoints/step_N/`` (:func:`save_checkpoint`, written whole or not at all),
``RUN/metrics.jsonl`` (:class:`JSONLinesTracker`: one JSON object per log event, ``step`` plus
``train/...`` or ``valid/...`` keys; :func:`read_metrics`), ``RUN/sessions.jsonl`` (one line per
call of a trainer, written at its start and at each checkpoint: :func:`session_record`,
:func:`open_session`, :func:`write_session`, :func:`read_sessions`), the learning-rate
schedule (:func:`learning_rate_factor`) and the stop rule: ``max_minutes`` or SIGTERM/SIGINT
stop at the end of a step, with a checkpoint, on every process at once (:func:`stop_reason`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.tracking import GeneralTracker

from vqaudio._files import atomic_write_text
from vqaudio._system import available_cores
from vqaudio.config import config_to_dict

CHECKPOINTS_DIR = "checkpoints"
METRICS_NAME = "metrics.jsonl"
SESSIONS_NAME = "sessions.jsonl"

#: Learning-rate schedules of both trainers (``--lr-schedule``).
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_factor(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based), the same
    in both trainers.

    Linear warm-up: ``(step + 1) / warmup_steps`` over the first ``warmup_steps`` steps; then
    ``"constant"``: 1; ``"cosine"``: half a cosine from 1 down to 0.1 at ``max_steps`` (SGDR's
    annealing without restarts, Loshchilov & Hutter 2017, with a floor of 10 %), 0.1 after it.

    Raises:
        ValueError: an unknown ``schedule``.
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"learning-rate schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


class JSONLinesTracker(GeneralTracker):
    """An Accelerate tracker appending ``{"step": step, **values}`` lines to a JSON-lines file.

    Registered with ``Accelerator(log_with=[...])``; ``accelerator.log(values, step)`` reaches
    it on the main process only. Each line is flushed when written, so a crash loses nothing
    that was logged.
    """

    name = "jsonl"
    requires_logging_directory = False
    main_process_only = True

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self.path = Path(path)

    @property
    def tracker(self) -> Path:
        """The file written."""
        return self.path

    def store_init_configuration(self, values: dict) -> None:
        """Configurations are saved as ``train_config.json`` etc.; nothing to do here."""

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        """Append one line ``{"step": step, **values}``."""
        record = {"step": step, **{k: jsonable(v) for k, v in values.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` in order (``[]`` when there is none yet).

    Training lines carry ``train/...`` keys, validation lines ``valid/...`` keys; every line
    has ``step``.

    Raises:
        ValueError: a line that is not valid JSON (names the file and line).
    """
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{i}: not valid JSON ({exc})") from None
    return records


def iter_metric(records: Sequence[dict[str, Any]], key: str) -> Iterator[tuple[int, float]]:
    """``(step, value)`` for every record of :func:`read_metrics` that has ``key``."""
    for r in records:
        if key in r:
            yield r["step"], r[key]


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after ``step`` (by a session that crashed after its checkpoint)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    keep = [ln for ln in lines if ln.strip() and json.loads(ln).get("step", 0) <= step]
    if len(keep) != len(lines):
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


def jsonable(value: Any) -> Any:
    """A metric value as a JSON-ready Python scalar (0-d tensors and numpy scalars unwrapped)."""
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints of a run, ``RUN/checkpoints/step_XXXXXXX``, oldest first.

    Folders still being written (``.step_XXXXXXX.tmp``) are left out.
    """
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if d.is_dir() and d.name.startswith("step_") and d.name[5:].isdigit():
            found.append((int(d.name[5:]), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or ``None``."""
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


#: The file of a checkpoint folder that lists its other files with their sizes and SHA-256.
MANIFEST_NAME = "manifest.json"


def write_manifest(folder: Path) -> Path:
    """Write ``folder/manifest.json``: every other file of the folder (relative path -> size in
    bytes and SHA-256), through a temporary name and a rename, after all of them are written."""
    from vqaudio._files import file_sha256

    files = {}
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[f.relative_to(folder).as_posix()] = {"size": f.stat().st_size, "sha256": file_sha256(f)}
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, folder / MANIFEST_NAME)
    return folder / MANIFEST_NAME


def checkpoint_problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder by its manifest (:func:`write_manifest`), or None
    when every listed file is there with its size and SHA-256. A folder written before
    checkpoints had manifests has none and is not checked here (None)."""
    from vqaudio._files import file_sha256

    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST_NAME} ({exc})"
    for name, meta in files.items():
        f = folder / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != meta["size"]:
            return f"{name} has {size} bytes, {meta['size']} were written (truncated or replaced)"
        if file_sha256(f) != meta["sha256"]:
            return f"{name} does not match its SHA-256 (damaged)"
    return None


def intact_checkpoint(run_dir: Path, say: Any = print) -> Path | None:
    """The newest checkpoint of a run that matches its manifest (:func:`checkpoint_problem`);
    damaged ones are skipped with a line through ``say`` naming each and its problem.

    Returns:
        the checkpoint, or None when the run has none.

    Raises:
        CheckpointError: the run has checkpoints and none of them is intact.
    """
    return resume_from_checkpoint(run_dir, lambda folder: None, say)


def resume_from_checkpoint(run_dir: Path, load: Any, say: Any = print) -> Path | None:
    """Load the newest intact checkpoint of a run, skipping damaged ones.

    Each checkpoint, newest first, is checked against its manifest (:func:`checkpoint_problem`)
    and then loaded with ``load(folder)``; a damaged one, or one whose loading fails, is
    skipped with a line through ``say`` naming it and the problem.

    Args:
        run_dir: the run; load: ``folder -> None``, raising on a checkpoint it cannot load
            (``accelerator.load_state``); say: where the skip lines go.

    Returns:
        the checkpoint loaded, or None when the run has none.

    Raises:
        CheckpointError: the run has checkpoints and none of them is intact (one line, each
            checkpoint with its problem).
    """
    from vqaudio.checkpoint import CheckpointError

    problems = []
    for folder in reversed(checkpoint_dirs(run_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            try:
                load(folder)
                return folder
            except Exception as exc:  # a file that torch, safetensors or pickle cannot read
                problem = f"cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        problems.append(f"{folder.name}: {problem}")
        say(f"{run_dir}: skipping checkpoint {folder.name}: {problem}")
    if problems:
        raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from ({'; '.join(problems)})")
    return None


def save_checkpoint(
    accelerator: Any,
    run_dir: Path,
    step: int,
    keep_last: int,
    extra_files: dict[str, Any] | None = None,
    digits: int = 7,
) -> Path:
    """``accelerator.save_state`` into ``RUN/checkpoints/step_{step:0{digits}d}`` (all processes
    call it).

    The state is written to ``.step_N.tmp``, with ``extra_files`` (name -> JSON-ready object,
    written by the main process) and, last, a manifest of every file's size and SHA-256
    (:func:`write_manifest`, checked when resuming: :func:`resume_from_checkpoint`), and
    renamed when every process has finished, so a crash never leaves a partial ``step_*``
    folder; then all but the newest ``keep_last`` checkpoints are deleted. Returns the
    checkpoint folder.
    """
    root = run_dir / CHECKPOINTS_DIR
    final = root / f"step_{step:0{digits}d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name, obj in (extra_files or {}).items():
            (tmp / name).write_text(json.dumps(obj))
        write_manifest(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def catch_stop_signals(request: list[int]) -> dict[int, Any]:
    """Make SIGTERM and SIGINT append to ``request`` (the loop then stops at the end of its
    step, with a checkpoint) instead of killing the process; a second signal acts as usual.
    Only in the main thread (elsewhere Python cannot set handlers). Returns the old handlers."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    old: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        request.append(signum)
        signal.signal(signum, old[signum] if old[signum] not in (None, signal.SIG_IGN) else signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        old[sig] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return old


def restore_signals(old: dict[int, Any]) -> None:
    """Put back the handlers that :func:`catch_stop_signals` returned."""
    import signal

    for sig, handler in old.items():
        signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), or the platform's processor string."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def stop_reason(accelerator: Any, started: float, max_minutes: float | None, stop_request: Sequence[int]) -> str | None:
    """Why a trainer should stop after the step it just finished: ``"signal"`` (SIGTERM / SIGINT
    caught by :func:`catch_stop_signals` into ``stop_request``), ``"max_minutes"`` (more than
    ``max_minutes`` since ``started``, a ``time.perf_counter()`` value), or None; the same answer
    on every process (the most urgent reason of any)."""
    over = max_minutes is not None and time.perf_counter() - started > 60 * max_minutes
    code = 2 * bool(stop_request) + over
    if accelerator.num_processes > 1:
        code = int(accelerator.reduce(torch.tensor(code, device=accelerator.device), reduction="max"))
    return "signal" if code >= 2 else "max_minutes" if code else None


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that started this process, as a user would type it again: the ``vqaudio``
    command for its console script or ``python -m vqaudio.cli``, ``python SCRIPT`` (relative to
    the working folder where it lies inside it) for a script, then the arguments as given; so a
    run's records name no interpreter or installation folder.

    Args:
        argv: the arguments (default ``sys.argv``).

    Returns:
        a shell-quoted command line.
    """
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path("vqaudio")
    if program.name == "vqaudio" or program.as_posix().endswith("vqaudio/cli.py"):
        head = ["vqaudio"]
    else:
        try:
            shown = program.resolve().relative_to(Path.cwd().resolve()).as_posix()
        except ValueError:
            shown = program.name
        head = ["python", shown]
    return " ".join(shlex.quote(a) for a in head + argv[1:])


def session_record(accelerator: Any, mixed_precision: str, start_step: int) -> dict[str, Any]:
    """The start of one ``sessions.jsonl`` line: when, from which step, on what (device, GPU
    name, processes, threads, cores, CPU model, torch) and the command line (:func:`command_line`)."""
    return {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": start_step,
        "mixed_precision": mixed_precision, "device": str(accelerator.device),
        "num_processes": accelerator.num_processes, "num_threads": torch.get_num_threads(),
        "cores": available_cores(), "cpu_model": cpu_model(), "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else None,
        "argv": command_line(),
    }


def write_session(run_dir: Path, session: dict[str, Any], started: float, **end: Any) -> None:
    """Write this session's line of ``RUN/sessions.jsonl`` (main process only): ``session``
    (:func:`session_record`) with its progress or end (``end_step``, ``stopped``, counts...) and
    ``session_seconds`` (since ``started``, a ``time.perf_counter()`` value).

    The trainers write the line when a session starts (``stopped: "running"``), rewrite it at
    each checkpoint and at the end, so a session killed without a chance to say so still
    counts up to its last checkpoint; the next session of the run marks such a line
    ``"killed"`` (:func:`open_session`). The file is replaced through a temporary name.
    """
    path = Path(run_dir) / SESSIONS_NAME
    record = {**session, **end, "session_seconds": round(time.perf_counter() - started, 1)}
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    ours = [i for i, line in enumerate(lines)
            if line.strip() and json.loads(line).get("session_id") == session.get("session_id")]
    if ours and session.get("session_id") is not None:
        lines[ours[-1]] = json.dumps(record)
    else:
        lines.append(json.dumps(record))
    tmp = path.with_name(f".{SESSIONS_NAME}.tmp")
    tmp.write_text("".join(line + "\n" for line in lines if line.strip()), encoding="utf-8")
    os.replace(tmp, path)


def open_session(run_dir: Path, session: dict[str, Any], started: float, **progress: Any) -> dict[str, Any]:
    """Start this session's line of ``sessions.jsonl`` (:func:`write_session`, ``stopped:
    "running"``), after marking the lines of earlier sessions that never ended (``"running"``:
    the process was killed) ``"killed"``. Returns ``session`` with its ``session_id``."""
    import uuid

    path = Path(run_dir) / SESSIONS_NAME
    if path.is_file():
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if any(r.get("stopped") == "running" for r in lines):
            tmp = path.with_name(f".{SESSIONS_NAME}.tmp")
            tmp.write_text("".join(json.dumps({**r, "stopped": "killed"} if r.get("stopped") == "running" else r)
                                   + "\n" for r in lines), encoding="utf-8")
            os.replace(tmp, path)
    session = {**session, "session_id": uuid.uuid4().hex}
    write_session(run_dir, session, started, stopped="running", **progress)
    return session


def read_sessions(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of ``RUN/sessions.jsonl`` (:func:`write_session`), oldest first: finished
    sessions, killed ones (up to their last checkpoint) and one still running; empty when the
    run predates session records."""
    path = Path(run_dir) / SESSIONS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def flat_config(*configs: Any) -> dict[str, Any]:
    """Dotted keys -> scalar values (non-scalars as strings) of one or two configs; with two,
    the keys start with ``train.`` and ``model.``."""
    flat: dict[str, Any] = {}

    def visit(prefix: str, obj: Any) -> None:
        for k, v in obj.items():
            if isinstance(v, dict):
                visit(f"{prefix}{k}.", v)
            else:
                flat[prefix + k] = v if isinstance(v, (bool, int, float, str)) else str(v)

    if len(configs) == 1:
        visit("", config_to_dict(configs[0]))
    else:
        visit("train.", config_to_dict(configs[0]))
        visit("model.", config_to_dict(configs[1]))
    return flat


def shutdown_distributed() -> None:
    """Destroy the torch.distributed process group, if any, before the interpreter exits.

    Under ``torchrun`` / ``accelerate launch`` a gloo process group left alive at exit aborts
    its process ("terminate called without an active exception", exit -6), failing a run
    that had finished. Entry points call this once, after their last stage.

    Garbage is collected around it: the finished run's ``Accelerator`` and DDP model sit in
    reference cycles, so their communication state (DDP's reducer, gloo work objects) would
    otherwise be freed during interpreter finalization, where releasing a tensor's Python
    reference from a gloo thread can abort the process too. That is the likely cause of a rare
    abort seen after the group had been destroyed (one CI run in about six, before this).
    """
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()
        gc.collect()
