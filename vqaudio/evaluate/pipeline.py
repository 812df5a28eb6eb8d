"""``evaluate()``: score a checkpoint and classic codecs on held-out audio with the same code.

What runs, in order (each stage prints a progress bar):

1. **Data**: the clips of a corpus (any layout of :mod:`vqaudio.data`), its held-out split by
   default, or a list of files; ``max_clips`` picks an even spread over speakers and over each
   speaker's utterances. Every clip is loaded at the evaluation rate (the model's rate, or the
   data's own rate when no checkpoint is given).
2. **References**: the judges run once on the original audio: speaker embeddings (for the
   centroids), recognised words. Every system is compared with these cached results.
3. **Systems**: the baselines (original audio, Codec 2, Opus) and, with a checkpoint, vqaudio's
   reconstruction (encode, decode with the true speaker). Decoded audio is written under
   ``out_dir/audio/`` and reused when the evaluation is run again (resume).
4. **Scores** per system: see :func:`score_system`.
5. **Conversion** (with a checkpoint): each clip decoded with another speaker's id, judged for
   the target's and the source's voice and for intelligibility.
6. **Generation** (with a prior): codes sampled from the prior for each speaker, decoded, judged.
7. **Report**: ``report.json``, ``report.md``, PNG plots and the listening page
   ``report.html`` (:mod:`vqaudio.evaluate.report`).

Cost, measured on the FSDD test split (300 clips, 129 s of audio, 8 kHz) on the 2-core
development machine: references and the five default baselines take 107 s when the machine is
otherwise idle (338 s while other jobs loaded it to a load average of 8); per system most of
the time goes to ViSQOL, then the speaker judge and the recogniser. With a checkpoint of the
default size (2 x 10 WaveNet layers, compiled decoding), 300 reconstructions, 300 conversions
and 12 prior samples bring the whole run to 215 s on the idle machine (570 s under load 8). Free speech recognition (corpora
without digit texts) costs pocketsphinx 1-2 CPU seconds per second of audio per system.
vqaudio's decoder generates audio sample by sample; its cost is that of
``VQVAE.decode_batch`` (compiled path: faster than real time; torch path: a few thousand
samples per second), which is why ``max_clips`` exists. Torch, numpy's BLAS and numba run
many times slower with 2 threads than with 1 on a loaded machine: the judges use 1 thread,
and ``num_threads=1`` is the better choice for decoding there.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vqaudio._files import atomic_write_json
from vqaudio._system import default_device
from vqaudio.audio import load_audio, read_audio, save_audio
from vqaudio.evaluate import metrics as M
from vqaudio.evaluate.baselines import DEFAULT_BASELINES, Baseline, baseline_available, make_baseline
from vqaudio.evaluate.judges import DigitDetector, Recognizer, SpeakerCentroids, SpeakerJudge, word_error_rate
from vqaudio.evaluate.optional import require
from vqaudio.nn.quantizer import code_entropy

#: Parts of the evaluation that can be skipped (``skip=``).
SKIPPABLE = ("pesq", "stoi", "visqol", "mcd", "speaker", "asr", "conversion", "generation", "plots")

#: Name of the state file that marks an output folder as an evaluation (for resuming).
STATE_NAME = "evaluate_state.json"

#: The FSDD digit words (index = digit); used when every transcript is one of them.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

#: A code sampler for generation: ``(speaker_id, num_codes, generator) -> codes [num_codes] int64``.
CodeSampler = Callable[[int, int, Any], Any]


@dataclass(frozen=True)
class EvalClip:
    """One held-out recording.

    Attributes:
        utterance_id: unique id (``7_jackson_3``, ``p225_001``); names output files.
        path: the audio file.
        speaker: speaker name, or None when unknown.
        text: transcript (FSDD: the digit word), or None.
    """

    utterance_id: str
    path: Path
    speaker: str | None
    text: str | None = None


@dataclass
class _References:
    """What is computed once on the original audio and shared by every system."""

    clips: list[EvalClip]
    wavs: list[np.ndarray]
    sample_rate: int
    groups: list[list[int]]
    joined: list[np.ndarray]
    embeddings: np.ndarray | None = None
    centroids: SpeakerCentroids | None = None
    hypotheses: list[str] | None = None
    asr_mode: str | None = None  # "digits", "wer", "wer-vs-original"
    timings: dict[str, float] = field(default_factory=dict)


# ----- data ----------------------------------------------------------------------------------


def load_clips(
    data: str | os.PathLike | Sequence[str | os.PathLike],
    split: str = "auto",
    num_held_out: int = 5,
    max_clips: int | None = None,
    held_out: Sequence[str] | None = None,
) -> tuple[list[EvalClip], dict[str, Any]]:
    """The clips to evaluate.

    Args:
        data: a corpus folder (VCTK 0.80/0.92, FSDD, ``{speaker}/*.wav`` trees), an audio file,
            a list of files/folders, or a text file (``.txt``/``.lst``) with one audio path per
            line (relative paths are relative to the text file; ``#`` starts a comment).
        split: ``"held-out"``: the corpus's held-out split (:func:`vqaudio.data.split_corpus`,
            FSDD: takes 0-4); ``"all"``: every clip; ``"auto"``: held-out for a corpus folder,
            all for files and file lists.
        num_held_out: utterances (or shared sentences) per speaker held out by the split, for
            corpora other than FSDD.
        max_clips: at most this many clips, spread evenly over speakers and over each
            speaker's (sorted) utterances; None keeps all.
        held_out: utterance ids that a training run held out (its ``data.json``): the
            held-out split is these instead of one recomputed with the default method, so a run
            trained with another ``--split`` is never scored on its training utterances.

    Returns:
        (clips sorted by speaker and id, facts about the selection for the report).

    Raises:
        vqaudio.data.CorpusError: no audio, unknown layout, bad split.
        ValueError: a bad ``split`` or ``max_clips``.
    """
    from vqaudio.data import corpus_from_files, discover_corpus, split_corpus

    if split not in ("auto", "held-out", "all"):
        raise ValueError(f"split must be 'auto', 'held-out' or 'all', got {split!r}")
    if max_clips is not None and max_clips < 1:
        raise ValueError(f"max_clips must be >= 1, got {max_clips}")
    list_file = None
    if isinstance(data, (str, os.PathLike)) and Path(data).suffix.lower() in (".txt", ".lst", ".list"):
        list_file = Path(data)
        corpus = corpus_from_files(_read_file_list(list_file))
    else:
        corpus = discover_corpus(data)
    use_split = split == "held-out" or (split == "auto" and corpus.layout != "files")
    if use_split and held_out is not None:
        wanted = set(held_out)
        corpus = corpus.with_utterances([u for u in corpus.utterances if u.utterance_id in wanted])
        if not corpus.utterances:
            raise ValueError(f"{data}: holds none of the {len(wanted)} utterances the run held out; "
                             f"evaluate on the run's data, or pass --split all")
    elif use_split:
        _, corpus = split_corpus(corpus, num_valid_per_speaker=num_held_out)
    clips = [EvalClip(u.utterance_id, Path(u.path), u.speaker, u.text) for u in corpus.utterances]
    total = len(clips)
    if max_clips is not None and len(clips) > max_clips:
        clips = _spread(clips, max_clips)
    clips.sort(key=lambda c: (c.speaker or "", c.utterance_id))
    info = {
        "data": str(list_file) if list_file else (str(data) if isinstance(data, (str, os.PathLike)) else [str(d) for d in data]),
        "layout": corpus.layout,
        "split": ("held-out (the run's)" if held_out is not None else "held-out") if use_split else "all",
        "clips_in_split": total,
        "clips": len(clips),
        "speakers": sorted({c.speaker for c in clips if c.speaker is not None}),
    }
    return clips, info


def _run_held_out(checkpoint: Any) -> list[str] | None:
    """The utterance ids held out by the training run ``checkpoint`` names (its ``data.json``),
    or None when it is not a run directory."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return None
    data_json = Path(checkpoint) / "data.json"
    if not (Path(checkpoint) / "train_config.json").is_file() or not data_json.is_file():
        return None
    ids = json.loads(data_json.read_text()).get("valid_utterances")
    return list(ids) if ids else None


def _read_file_list(path: Path) -> list[Path]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file list not found")
    files = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line)
            files.append(p if p.is_absolute() else path.parent / p)
    if not files:
        raise ValueError(f"{path}: the file list names no audio file")
    return files


def _spread(clips: list[EvalClip], n: int) -> list[EvalClip]:
    """``n`` clips spread evenly over speakers (round robin) and within each speaker's list."""
    by_speaker: dict[str | None, list[EvalClip]] = {}
    for c in clips:
        by_speaker.setdefault(c.speaker, []).append(c)
    names = sorted(by_speaker, key=lambda s: s or "")
    quota = {s: 0 for s in names}
    left = n
    while left > 0:
        for s in names:
            if left > 0 and quota[s] < len(by_speaker[s]):
                quota[s] += 1
                left -= 1
    chosen = []
    for s in names:
        items = sorted(by_speaker[s], key=lambda c: c.utterance_id)
        k = quota[s]
        if k:
            idx = np.unique(np.round(np.linspace(0, len(items) - 1, k)).astype(int))
            chosen.extend(items[i] for i in idx)
    return chosen


# ----- helpers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Set torch's intra-op threads inside the block and restore them after."""
    if num_threads is None:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit numpy's BLAS to one thread inside the block (threadpoolctl, when installed).

    The metrics and judges multiply small matrices; with several BLAS threads on a shared CPU
    they run many times slower (threads spin waiting for cores), so one thread is fastest.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _progress(iterable, desc: str, enabled: bool, total: int | None = None):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _nanmean(values: Sequence[float]) -> float | None:
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else None


def check_requirements(skip: Sequence[str] = (), baselines: Sequence[str] = ()) -> None:
    """Import every optional package this evaluation will use, before any slow work.

    Raises:
        MissingExtraError: the first missing package (the message names ``pip install -e ".[eval]"``).
    """
    needed = [m for part, m in (("pesq", "pesq"), ("stoi", "pystoi")) if part not in skip]
    if "visqol" not in skip:
        needed.append("visqol")
    if "speaker" not in skip:
        needed += ["webrtcvad", "resemblyzer"]
    if "asr" not in skip:
        needed.append("pocketsphinx")
    if any(b.startswith("codec2") for b in baselines):
        needed.append("pycodec2")
    for module in needed:
        require(module)


# ----- scoring -------------------------------------------------------------------------------


def prepare_references(
    clips: Sequence[EvalClip],
    wavs: Sequence[np.ndarray],
    sample_rate: int,
    speaker_judge: SpeakerJudge | None,
    recognizer: Recognizer | None,
    join_seconds: float = 3.0,
    gap_seconds: float = 0.3,
) -> _References:
    """Run the judges once on the original audio and join the clips into groups."""
    groups = M.group_clips([len(w) / sample_rate for w in wavs], [c.speaker for c in clips], join_seconds)
    joined = [M.join_clips([wavs[i] for i in g], sample_rate, gap_seconds) for g in groups]
    ref = _References(list(clips), list(wavs), sample_rate, groups, joined)
    if speaker_judge is not None and any(c.speaker is not None for c in clips):
        t = time.perf_counter()
        ref.embeddings = speaker_judge.embed(wavs, sample_rate)
        known = [i for i, c in enumerate(clips) if c.speaker is not None]
        # Centroids over clips with a known speaker; indices below are into `clips`.
        emb = np.full_like(ref.embeddings, np.nan)
        emb[known] = ref.embeddings[known]
        ref.centroids = SpeakerCentroids(emb, [c.speaker or "" for c in clips])
        ref.timings["reference_speaker_embeddings_s"] = time.perf_counter() - t
    if recognizer is not None:
        t = time.perf_counter()
        texts = [c.text for c in clips]
        if all(t_ is not None and t_.strip().lower() in DIGIT_WORDS for t_ in texts):
            ref.asr_mode = "digits"
        elif all(t_ is not None for t_ in texts):
            ref.asr_mode = "wer"
        else:
            ref.asr_mode = "wer-vs-original"
        ref.hypotheses = recognizer.recognize(wavs, sample_rate)
        ref.timings["reference_recognition_s"] = time.perf_counter() - t
    return ref


def intelligibility(ref: _References, hypotheses: Sequence[str], indices: Sequence[int]) -> dict[str, float | None]:
    """Intelligibility of outputs whose sources are ``ref.clips[indices]``.

    ``digits``: share of outputs recognised as their source's digit (grammar recogniser);
    ``wer``: word error rate against the transcripts; ``wer-vs-original``: word error rate
    against the recogniser's output on the original audio (agreement).
    """
    if ref.asr_mode == "digits":
        ok = [h == (ref.clips[i].text or "").strip().lower() for h, i in zip(hypotheses, indices)]
        return {"digit_accuracy": float(np.mean(ok)) if ok else None}
    if ref.asr_mode == "wer":
        return {"wer": word_error_rate([ref.clips[i].text or "" for i in indices], hypotheses)}
    assert ref.hypotheses is not None
    return {"wer_vs_original": word_error_rate([ref.hypotheses[i] for i in indices], hypotheses)}


def score_system(
    name: str,
    outputs: Sequence[np.ndarray],
    ref: _References,
    speaker_judge: SpeakerJudge | None,
    recognizer: Recognizer | None,
    visqol: M.Visqol | None,
    skip: Sequence[str] = (),
    gap_seconds: float = 0.3,
    progress: bool = True,
) -> dict[str, Any]:
    """All reconstruction scores of one system's outputs against the references.

    Waveform metrics run after removing the system's delay (:func:`metrics.estimate_delay`):
    per clip PESQ (nb; wb too at 16 kHz and above), log-mel L1, MCD with DTW; on joined clips
    PESQ, STOI, ESTOI, ViSQOL. Judges: GE2E cosine similarity of each output to its reference
    utterance and to its speaker's centroid (leave-one-out), identification accuracy by the
    nearest centroid (over clips whose speaker has another reference clip), and
    intelligibility (:func:`intelligibility`). Output level (:func:`metrics.output_level`):
    ``peak``, ``peak_median``, ``rms_dbfs``, ``clipped_share``.

    Args:
        outputs: one [T'_i] float32 output per reference clip, at ``ref.sample_rate``.
        visqol: the ViSQOL scorer, or None to leave ViSQOL out.
        skip: metrics to leave out: ``"pesq"``, ``"stoi"`` (STOI and ESTOI), ``"mcd"``.

    Returns:
        a flat dict of metric name -> value (None where undefined or skipped).
    """
    sr = ref.sample_rate
    is_original = name == "original"
    t0 = time.perf_counter()
    delay = 0 if is_original else M.estimate_delay(ref.wavs, outputs, sr)
    aligned = [M.align(o, delay, len(r)) for o, r in zip(outputs, ref.wavs)]
    res: dict[str, Any] = {"delay_ms": 1000.0 * delay / sr, **M.output_level(outputs)}
    wide = sr >= 16000
    do_pesq, do_stoi, do_mcd = "pesq" not in skip, "stoi" not in skip, "mcd" not in skip

    per_pesq_nb, per_pesq_wb, per_logmel, per_mcd = [], [], [], []
    for r, a in _progress(list(zip(ref.wavs, aligned)), f"{name}: per-clip metrics", progress):
        if do_pesq:
            per_pesq_nb.append(M.pesq_score(r, a, sr, "nb"))
            if wide:
                per_pesq_wb.append(M.pesq_score(r, a, sr, "wb"))
        per_logmel.append(M.log_mel_l1(r, a, sr))
        if do_mcd:
            per_mcd.append(M.mel_cepstral_distortion(r, a, sr))
    joined = [M.join_clips([aligned[i] for i in g], sr, gap_seconds) for g in ref.groups]
    j_pesq_nb, j_pesq_wb, j_stoi, j_estoi, j_visqol = [], [], [], [], []
    for r, a in _progress(list(zip(ref.joined, joined)), f"{name}: joined-clip metrics", progress):
        if do_pesq:
            j_pesq_nb.append(M.pesq_score(r, a, sr, "nb"))
            if wide:
                j_pesq_wb.append(M.pesq_score(r, a, sr, "wb"))
        if do_stoi:
            j_stoi.append(M.stoi_score(r, a, sr))
            j_estoi.append(M.stoi_score(r, a, sr, extended=True))
        if visqol is not None:
            j_visqol.append(visqol(r, a, sr))
    res.update({
        "pesq_nb": _nanmean(j_pesq_nb),
        "pesq_wb": _nanmean(j_pesq_wb),
        "stoi": _nanmean(j_stoi),
        "estoi": _nanmean(j_estoi),
        "visqol": _nanmean(j_visqol),
        "pesq_nb_per_clip": _nanmean(per_pesq_nb),
        "pesq_wb_per_clip": _nanmean(per_pesq_wb),
        "log_mel_l1": _nanmean(per_logmel),
        "mcd_db": _nanmean(per_mcd),
    })
    res["timing_metrics_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    if speaker_judge is not None and ref.centroids is not None and ref.embeddings is not None:
        emb = ref.embeddings if is_original else speaker_judge.embed(aligned, sr)
        sim_ref, sim_cen, correct = [], [], []
        for i, c in enumerate(ref.clips):
            if c.speaker is None:
                continue
            sim_ref.append(float(np.dot(emb[i], ref.embeddings[i])))
            if ref.centroids.has_centroid(c.speaker, exclude=i):  # another clip of the speaker exists
                sim_cen.append(ref.centroids.similarity(emb[i], c.speaker, exclude=i))
                correct.append(ref.centroids.identify(emb[i], exclude=i) == c.speaker)
        res.update({
            "speaker_similarity_to_reference": _nanmean(sim_ref),
            "speaker_similarity_to_centroid": _nanmean(sim_cen),
            "speaker_identification": float(np.mean(correct)) if correct else None,
        })
    if recognizer is not None and ref.hypotheses is not None:
        hyps = ref.hypotheses if is_original else recognizer.recognize(aligned, sr)
        res.update(intelligibility(ref, hyps, range(len(ref.clips))))
    res["timing_judges_s"] = time.perf_counter() - t1
    return res


def score_conversions(
    pairs: Sequence[tuple[int, str]],
    outputs: Sequence[np.ndarray],
    ref: _References,
    speaker_judge: SpeakerJudge | None,
    recognizer: Recognizer | None,
) -> dict[str, Any]:
    """Scores of voice conversions: ``outputs[k]`` is clip ``pairs[k][0]`` decoded as speaker ``pairs[k][1]``.

    Returns: cosine similarity to the target's centroid and to the source's centroid (the
    source utterance left out), share identified as the target (nearest centroid),
    intelligibility against the source clip's text (or its recognised words), the outputs'
    level (:func:`metrics.output_level`), and their level against the target speaker's:
    ``level_vs_target_db`` (median over the pairs of the output's RMS level minus the median
    RMS level of the target speaker's original clips, in dB) and ``within_6db_of_target``
    (share of pairs within 6 dB of it).
    """
    sr = ref.sample_rate
    res: dict[str, Any] = {"pairs": len(pairs), **M.output_level(outputs)}
    speaker_levels = speaker_rms_dbfs(ref)
    offsets = [M.rms_dbfs(o) - speaker_levels[t] for (_, t), o in zip(pairs, outputs)
               if len(o) and t in speaker_levels]
    if offsets:
        res["level_vs_target_db"] = float(np.median(offsets))
        res["within_6db_of_target"] = float(np.mean(np.abs(offsets) <= 6))
    if speaker_judge is not None and ref.centroids is not None:
        emb = speaker_judge.embed(outputs, sr)
        sim_t, sim_s, as_target, as_source = [], [], [], []
        for k, (i, target) in enumerate(pairs):
            source = ref.clips[i].speaker
            if not ref.centroids.has_centroid(target):
                continue
            sim_t.append(ref.centroids.similarity(emb[k], target, exclude=i))
            if source is not None and ref.centroids.has_centroid(source, exclude=i):
                sim_s.append(ref.centroids.similarity(emb[k], source, exclude=i))
            who = ref.centroids.identify(emb[k], exclude=i)
            as_target.append(who == target)
            as_source.append(who is not None and who == source)
        res.update({
            "similarity_to_target": _nanmean(sim_t),
            "similarity_to_source": _nanmean(sim_s),
            "identified_as_target": float(np.mean(as_target)) if as_target else None,
            "identified_as_source": float(np.mean(as_source)) if as_source else None,
        })
    if recognizer is not None and ref.hypotheses is not None:
        hyps = recognizer.recognize(outputs, sr)
        res.update(intelligibility(ref, hyps, [i for i, _ in pairs]))
    return res


def speaker_rms_dbfs(ref: _References) -> dict[str, float]:
    """Each speaker's median RMS level (dBFS, :func:`metrics.rms_dbfs`) over its original clips."""
    levels: dict[str, list[float]] = {}
    for c, w in zip(ref.clips, ref.wavs):
        if c.speaker is not None and len(w):
            levels.setdefault(c.speaker, []).append(M.rms_dbfs(w))
    return {s: float(np.median(v)) for s, v in sorted(levels.items())}


def conversion_pairs(clips: Sequence[EvalClip], targets: Sequence[str], max_pairs: int | None = None) -> list[tuple[int, str]]:
    """Source/target pairs: the clips of speaker ``s`` (the ``j``-th speaker of ``targets``) go to
    the other speakers in turn, starting at the ``j``-th other one (the k-th clip to other
    speaker ``(j + k) mod (S - 1)``), so every ordered pair of speakers is covered about
    equally, even with few clips per speaker. Clips with an unknown speaker are left out.

    Returns [(clip index, target speaker)], at most ``max_pairs`` spread evenly over the clips.
    """
    targets = sorted(set(targets))
    seen: dict[str, int] = {}
    pairs = []
    for i, c in enumerate(clips):
        if c.speaker is None or c.speaker not in targets:
            continue
        others = [t for t in targets if t != c.speaker]
        if not others:
            continue
        k = seen.get(c.speaker, 0)
        seen[c.speaker] = k + 1
        pairs.append((i, others[(k + targets.index(c.speaker)) % len(others)]))
    if max_pairs is not None and len(pairs) > max_pairs:
        idx = np.unique(np.round(np.linspace(0, len(pairs) - 1, max_pairs)).astype(int))
        pairs = [pairs[j] for j in idx]
    return pairs


# ----- vqaudio decoding ----------------------------------------------------------------------


def _decode_batched(
    model,
    jobs: Sequence[tuple[str, np.ndarray, int]],
    out_folder: Path,
    batch_size: int,
    temperature: float,
    seed: int,
    method: str,
    progress: bool,
    desc: str,
) -> list[np.ndarray]:
    """Decode ``jobs`` = [(name, codes [T'] int64, speaker id)] to WAVs in ``out_folder``.

    Files already there (from an interrupted run) are read back instead of decoded (and their
    number is printed to stderr). A batch
    goes through ``model.decode_batch`` (each utterance at its own length) where the model has
    it; else its codes are padded at the end with their last code to the longest length (the
    WaveNet is causal and upsamples codes by repetition, so padding changes no sample of the
    clip) and the padding's samples are cut off. Each job's sampling noise is a function of
    ``seed`` and its name (:func:`vqaudio.model.item_noise`), so its audio does not depend on
    the batch it lands in: a resumed run, which decodes only the jobs left, writes what a fresh
    one would. Returns the audio as read back from the 16-bit files, as scored.
    """
    import torch

    from vqaudio.model import item_noise

    out_folder.mkdir(parents=True, exist_ok=True)
    todo = [k for k, (name, _, _) in enumerate(jobs) if not (out_folder / f"{name}.wav").is_file()]
    todo.sort(key=lambda k: len(jobs[k][1]))
    if len(todo) < len(jobs):
        print(f"{desc}: {len(jobs) - len(todo)} of {len(jobs)} files decoded by an earlier run are read back "
              f"from {out_folder} (--overwrite with other settings decodes all again)", file=sys.stderr)
    hop = model.hop_length
    batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    for batch in _progress(batches, desc, progress):
        speakers = torch.tensor([jobs[k][2] for k in batch], dtype=torch.long)
        noise = [item_noise(seed, jobs[k][0], len(jobs[k][1]) * hop, model.device) for k in batch]
        if hasattr(model, "decode_batch"):  # utterances of different lengths in one loop
            codes = [torch.from_numpy(np.ascontiguousarray(jobs[k][1])) for k in batch]
            wavs = [w.reshape(-1) for w in model.decode_batch(codes, speakers, temperature=temperature,
                                                              noise=noise, method=method)]
        else:
            longest = max(len(jobs[k][1]) for k in batch)
            codes = torch.stack([
                torch.from_numpy(np.pad(jobs[k][1], (0, longest - len(jobs[k][1])), mode="edge")) for k in batch
            ])
            padded = torch.stack([torch.nn.functional.pad(u, (0, longest * hop - len(u)), value=0.5) for u in noise])
            wav = model.decode(codes, speakers, temperature=temperature, noise=padded, method=method)
            wavs = [wav[row, 0] for row in range(len(batch))]
        for row, k in enumerate(batch):
            n = len(jobs[k][1]) * hop
            save_audio(out_folder / f"{jobs[k][0]}.wav", wavs[row][:n].cpu().numpy(), model.sample_rate)
    return [read_audio(out_folder / f"{name}.wav")[0] for name, _, _ in jobs]


def _encode_all(model, wavs: Sequence[np.ndarray], progress: bool) -> list[np.ndarray]:
    """Codes of every clip: [T_i] float32 -> [T_i // hop] int64 (empty for clips under one hop)."""
    import torch

    out = []
    for w in _progress(wavs, "vqaudio: encode", progress):
        if len(w) < model.hop_length:
            out.append(np.zeros(0, np.int64))
            continue
        out.append(model.encode(torch.from_numpy(np.asarray(w, np.float32))[None, None])[0].cpu().numpy())
    return out


def _code_vectors(model, codes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The code vectors of each clip's codes: [T'_i] int64 -> [T'_i, D] float32."""
    import torch

    with torch.no_grad():
        return [model.quantizer.decode(torch.from_numpy(np.asarray(c, np.int64))[None].to(model.device))[0].T.cpu().numpy()
                for c in codes]


def codebook_statistics(codes: Sequence[np.ndarray], codebook_size: int) -> dict[str, Any]:
    """Usage of the codebook over a set of code sequences.

    Returns: ``codes_in_use`` (distinct codes), ``codebook_usage`` (that share of K),
    ``perplexity`` = exp(entropy of the code histogram, nats) (1 .. K), ``entropy_bits`` per
    code, and ``histogram`` ([K] counts, for the plot).
    """
    counts = np.bincount(np.concatenate([np.asarray(c, np.int64) for c in codes]) if codes else np.zeros(0, np.int64),
                         minlength=codebook_size)
    entropy = code_entropy(counts) if counts.sum() else 0.0
    return {
        "codes_in_use": int((counts > 0).sum()),
        "codebook_usage": float((counts > 0).sum() / codebook_size),
        "perplexity": float(math.exp(entropy)),
        "entropy_bits": entropy / math.log(2),
        "histogram": counts.tolist(),
    }


# ----- prior ---------------------------------------------------------------------------------


def load_code_sampler(prior, model, steps: int | None = None, steps_need_diffusion: bool = True,
                      temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                      allow_mismatch: bool = False, sampler: str = "posterior") -> CodeSampler:
    """A :data:`CodeSampler` from a prior: a callable (used as is), a
    :class:`vqaudio.nn.prior.PriorTransformer` or
    :class:`vqaudio.nn.diffusion_prior.DiffusionPrior`, or the path of a saved one of either.

    A sampler made from a prior draws with :func:`vqaudio.generate.sample_codes` (so a
    diffusion prior makes sequences longer than its ``max_len`` window by window) and carries
    ``description`` (``{"type", "path", "steps", "sampler", "temperature", "top_k", "top_p"}``) and, for
    the diffusion prior, ``infill(codes [T'] int64, first, stop, speaker_id, generator)``.

    Args:
        steps: reverse steps of a diffusion prior (default: all of its T).
        steps_need_diffusion: ``steps`` (or a ``sampler`` other than the default) given for an
            autoregressive prior is an error (else, when several priors are compared, they are
            for the diffusion ones only).
        sampler: how a diffusion prior runs its steps (:data:`vqaudio.nn.diffusion_prior.SAMPLERS`).
        temperature, top_k, top_p: the prior's sampling (:func:`vqaudio.nn.prior.filter_logits`).
        allow_mismatch: see :func:`vqaudio.generate.check_compatible`.

    Raises:
        ValueError: the prior's speaker table or codebook size differs from the model's, it was
            fitted to another checkpoint's tokens (without ``allow_mismatch``), or ``steps`` or
            ``sampler`` for an autoregressive prior with ``steps_need_diffusion``.
    """
    import torch

    from vqaudio.nn.diffusion_prior import DiffusionPrior

    path = str(prior) if isinstance(prior, (str, os.PathLike)) else None
    if path is not None:
        from vqaudio.generate import load_prior

        prior = load_prior(prior)
    if hasattr(prior, "sample") and hasattr(prior, "speakers"):
        if list(prior.speakers) != list(model.speakers):
            raise ValueError(f"the prior's speakers {prior.speakers} differ from the checkpoint's {model.speakers}")
        from vqaudio.generate import check_compatible, sample_codes

        check_compatible(model, prior, allow_mismatch)
        module = prior
        diffusion = isinstance(module, DiffusionPrior)
        if steps is not None and not diffusion and steps_need_diffusion:
            raise ValueError("--steps is for a diffusion prior; this prior is autoregressive")
        if sampler != "posterior" and not diffusion and steps_need_diffusion:
            raise ValueError("--sampler is for a diffusion prior; this prior is autoregressive")
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p}

        def sample(speaker_id: int, num_codes: int, generator) -> torch.Tensor:
            return sample_codes(module, speaker_id, num_codes, generator=generator,
                                steps=steps if diffusion else None, sampler=sampler, **sampling)[0]

        sample.description = {"type": "diffusion" if diffusion else "autoregressive", "path": path,
                              "steps": (steps or module.config.num_timesteps) if diffusion else None,
                              "sampler": sampler if diffusion else None, **sampling}
        if diffusion:
            from vqaudio.infill import infill_codes

            def infill(codes, first: int, stop: int, speaker_id: int, generator) -> torch.Tensor:
                return infill_codes(module, torch.as_tensor(codes, dtype=torch.long), first, stop, speaker_id,
                                    steps=steps, generator=generator, sampler=sampler, **sampling)

            sample.infill = infill
        return sample
    if callable(prior):
        return prior
    raise ValueError(f"prior must be a path, a prior model or a callable, got {type(prior).__name__}")


# ----- the entry point -----------------------------------------------------------------------


def evaluate(
    checkpoint: str | os.PathLike | Any | None,
    data: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    prior: str | os.PathLike | CodeSampler | Any | None = None,
    *,
    split: str = "auto",
    num_held_out: int = 5,
    max_clips: int | None = None,
    max_conversions: int | None = None,
    generate_per_speaker: int = 2,
    generate_seconds: float | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    skip: Sequence[str] = (),
    join_seconds: float = 3.0,
    gap_seconds: float = 0.3,
    batch_size: int = 16,
    temperature: float | None = None,
    seed: int = 0,
    method: str = "auto",
    num_plot_clips: int = 3,
    num_threads: int | None = None,
    sample_rate: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    device: str | None = None,
    prior_steps: int | None = None,
    prior_temperature: float = 1.0,
    prior_top_k: int | None = None,
    prior_top_p: float | None = None,
    allow_mismatch: bool = False,
    conversion_matrix: int = 0,
    prior_sampler: str = "posterior",
) -> dict[str, Any]:
    """Score a checkpoint and classic codecs on held-out audio; write report.json, report.md, plots.

    Args:
        checkpoint: a VQ-VAE checkpoint (directory, training run, bundled name, or a loaded
            :class:`vqaudio.model.VQVAE`); None evaluates the baselines only.
        data: corpus folder, files, or a file list (see :func:`load_clips`).
        out_dir: output folder: created, or a previous evaluation's folder (decoded audio
            there is reused; the report is replaced).
        prior: for generation: a prior checkpoint path (either kind), a ``PriorTransformer`` or
            ``DiffusionPrior``, or a callable ``(speaker_id, num_codes, generator) -> codes
            [num_codes] int64``; None skips it. A list of them compares them in one report:
            ``report["generations"]`` holds each one's result (labelled by its folder name;
            audio in ``audio/generation/LABEL/``), ``report["generation"]`` the first's. With a
            diffusion prior the listening page also shows the listening clips with their
            middle third infilled.
        prior_steps: reverse steps of a diffusion prior (default: all of its T).
        prior_sampler: how a diffusion prior runs them (:data:`vqaudio.nn.diffusion_prior.SAMPLERS`).
        prior_temperature, prior_top_k, prior_top_p: the priors' sampling
            (:func:`vqaudio.nn.prior.filter_logits`); recorded with each prior's result.
        allow_mismatch: score priors fitted to another checkpoint's tokens (see
            :func:`vqaudio.generate.check_compatible`).
        split, num_held_out, max_clips: which clips (see :func:`load_clips`).
        max_conversions: at most this many conversions (default: one per clip).
        conversion_matrix: this many clips (one per speaker first, as on the listening page)
            are also decoded in every voice of the checkpoint, their own included, and shown
            as a matrix on the listening page (audio in ``audio/matrix/``;
            ``report["conversion_matrix"]`` names the clips and voices). 0: none; needs the
            listening page (``num_plot_clips`` > 0).
        generate_per_speaker: prior samples per speaker.
        generate_seconds: length of each sample (default: the median clip length).
        baselines: names for :func:`vqaudio.evaluate.baselines.make_baseline`; unavailable
            ones (Opus without opus-tools) are reported as skipped.
        skip: parts to leave out, from :data:`SKIPPABLE`.
        join_seconds, gap_seconds: clips are joined per speaker into groups of at least
            ``join_seconds`` with ``gap_seconds`` of silence between clips, for STOI, ESTOI,
            ViSQOL and PESQ on joined clips.
        batch_size: clips decoded together.
        temperature, seed, method: passed to ``VQVAE.decode`` (temperature default: the
            checkpoint's, ``config.decoder.temperature``; the report records the one used).
        num_plot_clips: clips shown in the spectrogram plot and on the listening page
            (``report.html``; 0: neither).
        num_threads: torch threads during the evaluation (restored after); None leaves them.
        sample_rate: evaluation rate without a checkpoint (default: the first clip's rate).
        device: torch device a checkpoint given by path is loaded on (default: cuda if
            available, else cpu); the judges and baselines run on the CPU.
        overwrite: allow ``out_dir`` to hold a previous evaluation with another checkpoint or
            decoding settings (its decoded audio is then deleted), or other files.
        progress: show progress bars.

    Returns:
        the report (as written to ``out_dir/report.json``).

    Raises:
        MissingExtraError: an optional package is missing (names ``pip install -e ".[eval]"``).
        ValueError: bad arguments, no clip with a speaker known to the checkpoint, or an
            ``out_dir`` that holds other files (without ``overwrite``).
        vqaudio.data.CorpusError, vqaudio.audio.AudioError: unusable data.
    """
    from vqaudio.evaluate import report as R

    unknown = set(skip) - set(SKIPPABLE)
    if unknown:
        raise ValueError(f"unknown parts to skip: {sorted(unknown)}; choose from {list(SKIPPABLE)}")
    baseline_objs: list[Baseline] = [make_baseline(b) for b in baselines]
    check_requirements(skip, baselines)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    out_dir = Path(out_dir)

    with _torch_threads(num_threads), _single_threaded_blas():
        model = None
        if checkpoint is not None:
            if isinstance(checkpoint, (str, os.PathLike)):
                from vqaudio.model import VQVAE

                model = VQVAE.from_pretrained(checkpoint, map_location=default_device(device))
            else:
                model = checkpoint
            model.eval()
        # Load the priors before any slow work, so a mismatched one fails at once.
        samplers: list[tuple[str, CodeSampler]] = []
        if prior is not None and model is not None and "generation" not in skip:
            several = isinstance(prior, (list, tuple))
            for i, p in enumerate(prior if several else [prior]):
                label = Path(p).name if isinstance(p, (str, os.PathLike)) else f"prior{i + 1}"
                if any(label == other for other, _ in samplers):
                    label = f"{label}-{i + 1}"
                samplers.append((label, load_code_sampler(
                    p, model, prior_steps, steps_need_diffusion=not several, temperature=prior_temperature,
                    top_k=prior_top_k, top_p=prior_top_p, allow_mismatch=allow_mismatch, sampler=prior_sampler)))
            if not several:  # one prior: its samples in audio/generation/, as before priors could be compared
                samplers = [("", samplers[0][1])]
        if model is not None:
            temperature = model.decode_temperature(temperature)
        _prepare_out_dir(out_dir, model, temperature, seed, overwrite)

        t = time.perf_counter()
        clips, data_info = load_clips(data, split, num_held_out, max_clips, _run_held_out(checkpoint))
        skipped_clips: list[str] = []
        if model is not None:
            keep = [c for c in clips if c.speaker in model.speakers]
            skipped_clips = [c.utterance_id for c in clips if c.speaker not in model.speakers]
            if not keep:
                raise ValueError(
                    f"no clip of {data_info['data']} has a speaker the checkpoint knows "
                    f"(checkpoint speakers: {', '.join(model.speakers)}; data speakers: "
                    f"{', '.join(data_info['speakers']) or 'unknown'})"
                )
            clips = keep
            sr = model.sample_rate
        else:
            sr = sample_rate or read_audio(clips[0].path)[1]
        wavs = [load_audio(c.path, sr) for c in _progress(clips, "load audio", progress)]
        timings["load_s"] = time.perf_counter() - t

        speaker_judge = None if "speaker" in skip else SpeakerJudge()
        recognizer = None
        if "asr" not in skip:
            digits = all(c.text is not None and c.text.strip().lower() in DIGIT_WORDS for c in clips)
            recognizer = Recognizer(DIGIT_WORDS if digits else None)
        visqol = None if "visqol" in skip else M.Visqol()

        t = time.perf_counter()
        ref = prepare_references(clips, wavs, sr, speaker_judge, recognizer, join_seconds, gap_seconds)
        timings["references_s"] = time.perf_counter() - t

        systems: dict[str, dict[str, Any]] = {}
        examples: dict[str, list[np.ndarray]] = {}
        for b in baseline_objs:
            why = baseline_available(b)
            if why is not None:
                systems[b.name] = {"skipped": why, "bitrate": b.bitrate(sr)}
                continue
            t = time.perf_counter()
            outs = [b(w, sr) for w in _progress(wavs, f"{b.name}: code", progress)]
            t_code = time.perf_counter() - t
            scores = score_system(b.name, outs, ref, speaker_judge, recognizer, visqol, skip, gap_seconds, progress)
            systems[b.name] = {"bitrate": b.bitrate(sr), "timing_codec_s": t_code, **scores}
            examples[b.name] = outs
            timings[f"{b.name}_s"] = time.perf_counter() - t

        codebook = None
        conversion_targets: dict[int, str] = {}
        conversion = None
        matrix: dict[str, Any] | None = None
        generation = None
        generations: list[dict[str, Any]] = []  # with several priors: each one's result
        if model is not None:
            t = time.perf_counter()
            codes = _encode_all(model, wavs, progress)
            jobs = [(c.utterance_id, codes[i], model.speaker_id(c.speaker)) for i, c in enumerate(clips) if len(codes[i])]
            outs_by_id = dict(zip(
                [j[0] for j in jobs],
                _decode_batched(model, jobs, out_dir / "audio" / "reconstruction", batch_size, temperature, seed,
                                method, progress, "vqaudio: decode reconstructions"),
            ))
            outs = [outs_by_id.get(c.utterance_id, np.zeros(0, np.float32)) for c in clips]
            timings["vqaudio_decode_s"] = time.perf_counter() - t
            t = time.perf_counter()
            scores = score_system("vqaudio", outs, ref, speaker_judge, recognizer, visqol, skip, gap_seconds, progress)
            timings["vqaudio_scores_s"] = time.perf_counter() - t
            cfg = model.config
            systems["vqaudio"] = {"bitrate": cfg.bitrate, "checkpoint_id": model.checkpoint_id, **scores}
            examples["vqaudio"] = outs
            codebook = codebook_statistics(codes, cfg.quantizer.codebook_size)
            codebook.update({
                "codebook_size": cfg.quantizer.codebook_size,
                "codes_per_second": cfg.codes_per_second,
                "bitrate": cfg.bitrate,
                "entropy_bitrate": cfg.codes_per_second * codebook["entropy_bits"],
            })
            codebook["speaker_probe"] = M.speaker_probe(_code_vectors(model, codes), [c.speaker for c in clips], seed)

            if "conversion" not in skip:
                t = time.perf_counter()
                present = sorted({c.speaker for c in clips if c.speaker is not None})
                pairs = conversion_pairs(clips, present, max_conversions)
                if pairs:
                    conv_jobs = [(f"{clips[i].utterance_id}__to__{tgt}", codes[i], model.speaker_id(tgt))
                                 for i, tgt in pairs if len(codes[i])]
                    pairs = [(i, tgt) for i, tgt in pairs if len(codes[i])]
                    conv_outs = _decode_batched(model, conv_jobs, out_dir / "audio" / "conversion", batch_size,
                                                temperature, seed + 1, method, progress, "vqaudio: decode conversions")
                    conversion = score_conversions(pairs, conv_outs, ref, speaker_judge, recognizer)
                    examples["conversion"] = [np.zeros(0, np.float32)] * len(clips)
                    for (i, tgt), o in zip(pairs, conv_outs):
                        if not len(examples["conversion"][i]):
                            examples["conversion"][i] = o
                            conversion_targets[i] = tgt
                    conversion["targets"] = {clips[i].utterance_id: tgt for i, tgt in pairs}
                timings["conversion_s"] = time.perf_counter() - t
                if conversion_matrix > 0 and num_plot_clips > 0 and "plots" not in skip:
                    t = time.perf_counter()
                    rows = [i for i in R.choose_clips(clips, conversion_matrix) if len(codes[i])]
                    voices = list(model.speakers)
                    jobs = [(f"{clips[i].utterance_id}__as__{v}", codes[i], model.speaker_id(v))
                            for i in rows for v in voices]
                    outs = _decode_batched(model, jobs, out_dir / "audio" / "matrix", batch_size, temperature,
                                           seed + 2, method, progress, "vqaudio: decode the conversion matrix")
                    matrix = {"clips": rows, "speakers": voices,
                              "outputs": [outs[k * len(voices):(k + 1) * len(voices)] for k in range(len(rows))]}
                    timings["conversion_matrix_s"] = time.perf_counter() - t

            for label, sampler in samplers:
                t = time.perf_counter()
                result = _generate_and_judge(model, sampler, ref, out_dir / "audio" / "generation" / label,
                                             generate_per_speaker, generate_seconds, batch_size, temperature, seed,
                                             method, speaker_judge, recognizer is not None, progress)
                timings[f"generation_{label}_s" if label else "generation_s"] = time.perf_counter() - t
                if label:
                    result["label"] = label
                    generations.append(result)
                if hasattr(sampler, "infill") and "infilled" not in examples and "plots" not in skip and num_plot_clips > 0:
                    t = time.perf_counter()
                    examples["infilled"], result["infilled"] = _infill_examples(
                        model, sampler, ref.clips, codes, out_dir, num_plot_clips, batch_size, temperature, seed,
                        method, progress)
                    timings["infill_s"] = time.perf_counter() - t
                generation = generation or result

        timings.update(ref.timings)
        timings["total_s"] = time.perf_counter() - started
        report: dict[str, Any] = {
            "vqaudio_version": _version(),
            "checkpoint": None if model is None else {
                "path": str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None,
                "checkpoint_id": model.checkpoint_id,
                "speakers": list(model.speakers),
            },
            "sample_rate": sr,
            "data": data_info,
            "skipped_clips": skipped_clips,
            "settings": {
                "join_seconds": join_seconds, "gap_seconds": gap_seconds, "groups": len(ref.groups),
                "temperature": temperature, "seed": seed, "method": method, "batch_size": batch_size,
                "skip": list(skip), "asr_mode": ref.asr_mode,
            },
            "judges": R.judge_versions(),
            "systems": systems,
            "codebook": codebook,
            "speaker_levels_dbfs": speaker_rms_dbfs(ref),
            "conversion": conversion,
            **({"conversion_matrix": {"clips": [clips[i].utterance_id for i in matrix["clips"]],
                                      "speakers": matrix["speakers"]}} if matrix else {}),
            "generation": generation,
            **({"generations": generations} if generations else {}),
            "timings": timings,
        }
        if "plots" not in skip:
            report["plots"] = R.write_plots(out_dir, ref.clips, ref.wavs, examples, sr, codebook, num_plot_clips,
                                            conversion_targets)
            if num_plot_clips > 0:
                page = R.write_listening_page(out_dir, report, ref.clips, ref.wavs, examples, sr,
                                              num_plot_clips, conversion_targets, matrix)
                report["listening_page"] = page.name
        R.write_report(out_dir, report)
    return report


def _version() -> str:
    from vqaudio import __version__

    return __version__


def _prepare_out_dir(out_dir: Path, model, temperature: float, seed: int, overwrite: bool) -> None:
    """Create ``out_dir`` or check that it is an earlier evaluation whose audio can be reused."""
    import shutil

    state = {
        "checkpoint_id": None if model is None else model.checkpoint_id,
        "sample_rate": None if model is None else model.sample_rate,
        "temperature": temperature,
        "seed": seed,
    }
    state_file = out_dir / STATE_NAME
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a folder")
        if state_file.is_file():
            old = json.loads(state_file.read_text())
            if old != state:
                if not overwrite:
                    raise ValueError(
                        f"{out_dir}: holds an evaluation with other settings ({old}); "
                        "pass --overwrite to replace it, or choose another --out"
                    )
                shutil.rmtree(out_dir / "audio", ignore_errors=True)
                shutil.rmtree(out_dir / "listen", ignore_errors=True)
        elif any(out_dir.iterdir()) and not overwrite:
            raise ValueError(f"{out_dir}: exists and is not empty; pass --overwrite or choose another --out")
    atomic_write_json(state_file, state, indent=1)


def _infill_examples(model, sampler: CodeSampler, clips: Sequence[EvalClip], codes: Sequence[np.ndarray], out_dir: Path,
                     num_clips: int, batch_size: int, temperature: float, seed: int, method: str,
                     progress: bool) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Infill the middle third of each listening-page clip (:func:`vqaudio.evaluate.report.choose_clips`)
    with the diffusion prior, conditioned on the codes on both sides, and decode it.

    Returns:
        the infilled audio per clip (empty where none) and ``{"clips", "spans"}``: the clip ids
        and the resampled code spans ``[first, stop)``.
    """
    import torch

    from vqaudio.evaluate.report import choose_clips

    jobs, spans = [], {}
    for i in choose_clips(clips, num_clips):
        n = len(codes[i])
        if n < 3:
            continue
        first, stop = n // 3, max(n // 3 + 1, (2 * n) // 3)
        name = clips[i].utterance_id
        sid = model.speaker_id(clips[i].speaker)
        g = torch.Generator().manual_seed(seed * 7919 + i)
        new = np.asarray(sampler.infill(codes[i], first, stop, sid, g).cpu(), np.int64)
        jobs.append((name, new, sid))
        spans[i] = (first, stop)
    outs = _decode_batched(model, jobs, out_dir / "audio" / "infill", batch_size, temperature, seed + 3,
                           method, progress, "vqaudio: decode infilled clips")
    infilled = [np.zeros(0, np.float32)] * len(clips)
    for i, o in zip(spans, outs):
        infilled[i] = o
    info = {"clips": [clips[i].utterance_id for i in spans], "spans": [list(spans[i]) for i in spans]}
    return infilled, info


def _generate_and_judge(model, sampler: CodeSampler, ref: _References, folder: Path, per_speaker: int, seconds: float | None,
                        batch_size: int, temperature: float, seed: int, method: str,
                        speaker_judge: SpeakerJudge | None, with_asr: bool, progress: bool) -> dict[str, Any]:
    """Sample codes from the prior for each speaker present in the data, decode them into
    ``folder`` and judge them. The samples' seeds depend on the speaker and the sample's
    index only, so several priors are compared on the same draws."""
    import torch

    if seconds is None:
        seconds = float(np.median([len(w) for w in ref.wavs])) / ref.sample_rate
    num_codes = max(1, int(round(seconds * model.config.codes_per_second)))
    speakers = sorted({c.speaker for c in ref.clips if c.speaker is not None})
    # Samples on disk are reused only if the same prior drew them the same way.
    drawn_by = {"prior": getattr(sampler, "description", None), "num_codes": num_codes}
    state = folder / "sampler.json"
    if folder.is_dir() and (not state.is_file() or json.loads(state.read_text()) != drawn_by):
        for old in folder.glob("*.wav"):
            old.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state, drawn_by, indent=1)
    jobs = []
    sampling_s, sampled = 0.0, 0
    for s in speakers:
        sid = model.speaker_id(s)
        for k in range(per_speaker):
            name = f"{s}__{k}"
            if not (folder / f"{name}.wav").is_file():
                g = torch.Generator().manual_seed(seed * 7919 + sid * 1009 + k)
                t = time.perf_counter()
                codes = np.asarray(torch.as_tensor(sampler(sid, num_codes, g)).cpu(), np.int64).reshape(-1)
                sampling_s += time.perf_counter() - t
                sampled += 1
            else:
                codes = np.zeros(num_codes, np.int64)  # read back from disk, not decoded
            jobs.append((name, codes, sid))
    outs = _decode_batched(model, jobs, folder, batch_size, temperature, seed + 2,
                           method, progress, "vqaudio: decode prior samples")
    res: dict[str, Any] = {"samples": len(jobs), "seconds_each": num_codes / model.config.codes_per_second,
                           "prior": getattr(sampler, "description", None)}
    if sampled:  # samples drawn by this run (a resumed one reads the others back)
        res["sampling_seconds_each"] = sampling_s / sampled
    requested = [name.split("__")[0] for name, _, _ in jobs]
    if speaker_judge is not None and ref.centroids is not None:
        emb = speaker_judge.embed(outs, ref.sample_rate)
        who = [ref.centroids.identify(e) for e in emb]
        res["identified_as_requested"] = float(np.mean([w == r for w, r in zip(who, requested)]))
        res["similarity_to_requested"] = _nanmean([ref.centroids.similarity(e, r) for e, r in zip(emb, requested)])
    if ref.asr_mode == "digits" and with_asr:
        # Is a digit heard at all (DigitDetector)? The same test on (up to 60 of) the original
        # clips is the ceiling to read it against.
        detector = DigitDetector(DIGIT_WORDS)
        res["recognised_as_digit"] = float(np.mean([detector(o, ref.sample_rate) for o in outs]))
        n = len(ref.wavs)
        pick = np.unique(np.round(np.linspace(0, n - 1, min(n, 60))).astype(int))
        res["recognised_as_digit_original"] = float(np.mean([detector(ref.wavs[i], ref.sample_rate) for i in pick]))
    return res
