"""Writing an evaluation: ``report.json``, ``report.md`` (Markdown tables), PNG plots.

Plots use matplotlib's object API (``Figure``, no pyplot state) with the Agg canvas, so they
work without a display and touch no global settings. Every file is written under a temporary
name and renamed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from vqaudio._files import atomic_write_json, atomic_write_text
from vqaudio.plots import save_png

#: Columns of the reconstruction table: (key in the system's scores, header, format, better).
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("bitrate", "kbit/s", "kbps", ""),
    ("pesq_nb", "PESQ-nb", ".2f", "↑"),
    ("pesq_wb", "PESQ-wb", ".2f", "↑"),
    ("stoi", "STOI", ".3f", "↑"),
    ("estoi", "ESTOI", ".3f", "↑"),
    ("visqol", "ViSQOL", ".2f", "↑"),
    ("log_mel_l1", "log-mel L1", ".3f", "↓"),
    ("mcd_db", "MCD dB", ".2f", "↓"),
    ("speaker_similarity_to_reference", "spk sim (utt)", ".3f", "↑"),
    ("speaker_similarity_to_centroid", "spk sim (centroid)", ".3f", "↑"),
    ("speaker_identification", "spk ID", ".3f", "↑"),
    ("digit_accuracy", "digit acc", ".3f", "↑"),
    ("wer", "WER", ".3f", "↓"),
    ("wer_vs_original", "WER vs orig ASR", ".3f", "↓"),
    ("rms_dbfs", "RMS dBFS", ".1f", ""),
    ("peak", "peak", ".3f", ""),
    ("clipped_share", "clipped", ".3f", "↓"),
)

#: Judges and metric packages whose versions go into the report.
_PACKAGES = ("pesq", "pystoi", "visqol-python", "pycodec2", "resemblyzer", "pocketsphinx", "webrtcvad",
             "webrtcvad-wheels")


def prior_sampling_text(description: dict[str, Any]) -> str:
    """How a prior's samples were drawn, in words, from a sampler's ``description``
    (:func:`vqaudio.evaluate.pipeline.load_code_sampler`): e.g. ``"autoregressive,
    temperature 0.8, top-p 0.9"`` or ``"diffusion, 25 reverse steps, confidence decoding"``; the
    defaults (temperature 1, no top-k or top-p, the posterior sampler) are left out."""
    parts = [description.get("type", "")] if description.get("type") else []
    if description.get("steps"):
        parts.append(f"{description['steps']} reverse steps")
    if description.get("sampler") not in (None, "posterior"):
        parts.append(f"{description['sampler']} decoding")
    if description.get("temperature", 1.0) != 1.0:
        parts.append(f"temperature {description['temperature']:g}")
    if description.get("top_k"):
        parts.append(f"top-k {description['top_k']}")
    if description.get("top_p"):
        parts.append(f"top-p {description['top_p']:g}")
    return ", ".join(parts)


def judge_versions() -> dict[str, str | None]:
    """Installed versions of the metric and judge packages (None when absent)."""
    out: dict[str, str | None] = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _clean(obj: Any) -> Any:
    """JSON-ready copy: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if fmt == "kbps":
        return f"{value / 1000:.3g}"
    return format(value, fmt)


def markdown_table(systems: dict[str, dict[str, Any]]) -> str:
    """The reconstruction table: one row per system, columns that at least one system has.

    Skipped systems get a row stating why.
    """
    present = [c for c in COLUMNS if any(s.get(c[0]) is not None for s in systems.values() if "skipped" not in s)]
    header = "| system | " + " | ".join(f"{h} {b}".strip() for _, h, _, b in present) + " |"
    lines = [header, "|" + "---|" * (len(present) + 1)]
    for name, s in systems.items():
        if "skipped" in s:
            lines.append(f"| {name} | skipped: {s['skipped']} |" + " |" * (len(present) - 1))
            continue
        lines.append(f"| {name} | " + " | ".join(_fmt(s.get(k), f) for k, _, f, _ in present) + " |")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """The whole Markdown report."""
    d = report["data"]
    s = report["settings"]
    lines = ["# vqaudio evaluation", ""]
    ck = report.get("checkpoint")
    lines.append(f"- checkpoint: {ck['path'] or 'in memory'} (id {ck['checkpoint_id']})" if ck else "- checkpoint: none (baselines only)")
    lines.append(f"- data: {d['data']} ({d['layout']}, {d['split']} split): {d['clips']} of {d['clips_in_split']} clips, "
                 f"speakers {', '.join(d['speakers'])}; evaluated at {report['sample_rate']} Hz")
    lines.append(f"- joined clips: {s['groups']} groups of at least {s['join_seconds']:g} s, "
                 f"{s['gap_seconds']:g} s gaps (PESQ, STOI, ESTOI, ViSQOL); per clip: log-mel L1, MCD")
    if report.get("skipped_clips"):
        lines.append(f"- {len(report['skipped_clips'])} clips left out: speaker unknown to the checkpoint")
    lines += ["", "## Reconstruction", "", markdown_table(report["systems"]), ""]
    lines.append("PESQ/STOI/ESTOI/ViSQOL on joined clips after delay alignment; speaker similarity and "
                 "identification by resemblyzer (GE2E) against leave-one-out centroids of the original "
                 "audio; intelligibility by pocketsphinx"
                 + (" with a digit grammar." if s.get("asr_mode") == "digits" else "."))
    cb = report.get("codebook")
    if cb:
        lines += ["", "## Codebook", "",
                  f"- {cb['codes_per_second']:g} codes/s x log2({cb['codebook_size']}) = {cb['bitrate'] / 1000:.3g} kbit/s; "
                  f"entropy of the code histogram {cb['entropy_bits']:.2f} bits/code ({cb['entropy_bitrate'] / 1000:.3g} kbit/s)",
                  f"- codes in use: {cb['codes_in_use']} of {cb['codebook_size']} ({100 * cb['codebook_usage']:.1f}%), "
                  f"perplexity {cb['perplexity']:.1f}"]
        probe = cb.get("speaker_probe") or {}
        if probe.get("frame_accuracy") is not None:
            lines.append(f"- speaker in the codes: a linear probe on the code vectors names the speaker of "
                         f"{probe['frame_accuracy']:.3f} of held-out frames and {probe['clip_accuracy']:.3f} of held-out "
                         f"clips (chance {probe['chance']:.3f}; fitted on {probe['fit_clips']} clips, scored on "
                         f"{probe['test_clips']})")
    conv = report.get("conversion")
    if conv:
        lines += ["", "## Speaker conversion", "",
                  "| pairs | sim to target ↑ | sim to source | ID as target ↑ | ID as source ↓ | intelligibility "
                  "| RMS dBFS | vs target dB | within 6 dB ↑ | clipped ↓ |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        intel = _intel(conv)
        lines.append(f"| {conv['pairs']} | {_fmt(conv.get('similarity_to_target'), '.3f')} | "
                     f"{_fmt(conv.get('similarity_to_source'), '.3f')} | {_fmt(conv.get('identified_as_target'), '.3f')} | "
                     f"{_fmt(conv.get('identified_as_source'), '.3f')} | {intel} | {_fmt(conv.get('rms_dbfs'), '.1f')} | "
                     f"{_fmt(conv.get('level_vs_target_db'), '+.1f')} | {_fmt(conv.get('within_6db_of_target'), '.3f')} | "
                     f"{_fmt(conv.get('clipped_share'), '.3f')} |")
        levels = report.get("speaker_levels_dbfs") or {}
        if levels:
            lines += ["", "Median RMS level of each speaker's original clips (dBFS): "
                      + ", ".join(f"{k} {v:.1f}" for k, v in levels.items()) + "."]
    gen = report.get("generation")
    if gen:
        prior = gen.get("prior") or {}
        kind = prior_sampling_text(prior)
        lines += ["", "## Generation with the prior", "",
                  f"- prior: {prior.get('path') or 'in memory'}" + (f" ({kind})" if kind else ""),
                  f"- {gen['samples']} samples of {gen['seconds_each']:.2f} s"
                  + (f", sampled in {gen['sampling_seconds_each']:.3f} s each" if "sampling_seconds_each" in gen else ""),
                  f"- identified as the requested speaker: {_fmt(gen.get('identified_as_requested'), '.3f')} "
                  f"(similarity {_fmt(gen.get('similarity_to_requested'), '.3f')})"]
        if "recognised_as_digit" in gen:
            lines.append(f"- heard as one digit word (digits vs 240 common words): {_fmt(gen['recognised_as_digit'], '.3f')} "
                         f"(original clips, same test: {_fmt(gen['recognised_as_digit_original'], '.3f')})")
    gens = report.get("generations") or []
    if gens:
        lines += ["", "## The priors compared (same seeds)", "",
                  "| prior | type | reverse steps | sampling s/sample | ID as requested ↑ | similarity ↑ | heard as a digit ↑ |",
                  "|---|---|---|---|---|---|---|"]
        for g in gens:
            p = g.get("prior") or {}
            lines.append(f"| {g['label']} | {prior_sampling_text({**p, 'steps': None}) or '–'} | {p.get('steps') or '–'} | "
                         f"{_fmt(g.get('sampling_seconds_each'), '.3f')} | {_fmt(g.get('identified_as_requested'), '.3f')} | "
                         f"{_fmt(g.get('similarity_to_requested'), '.3f')} | {_fmt(g.get('recognised_as_digit'), '.3f')} |")
    if report.get("listening_page"):
        lines += ["", f"Listening page (original, reconstruction, conversion, Codec 2 side by side): "
                      f"[{report['listening_page']}]({report['listening_page']})"]
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in report["plots"]]
    t = report.get("timings", {})
    if "total_s" in t:
        lines += ["", f"Evaluation time: {t['total_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def _intel(res: dict[str, Any]) -> str:
    for key, label in (("digit_accuracy", "digit acc"), ("wer", "WER"), ("wer_vs_original", "WER vs orig ASR")):
        if res.get(key) is not None:
            return f"{label} {res[key]:.3f}"
    return "–"


def write_report(out_dir: str | os.PathLike, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (atomically). Returns both paths."""
    out_dir = Path(out_dir)
    clean = _clean(report)
    js, md = out_dir / "report.json", out_dir / "report.md"
    atomic_write_json(js, clean)
    atomic_write_text(md, render_markdown(clean))
    return js, md


def plot_spectrograms(
    path: str | os.PathLike,
    rows: Sequence[tuple[str, dict[str, np.ndarray]]],
    sample_rate: int,
    notes: Sequence[dict[str, str]] | None = None,
) -> Path:
    """A grid of log-mel spectrograms: one row per clip, one column per version.

    Args:
        rows: [(clip title, {version name: wav [T] float32})]; versions keep their order.
        sample_rate: Hz.
        notes: per row, {version name: text added to that cell's title} (e.g. a conversion's target).
    """
    from matplotlib.figure import Figure

    from vqaudio.evaluate.metrics import log_mel_spectrogram, mel_settings

    columns = list(dict.fromkeys(k for _, versions in rows for k in versions))
    fig = Figure(figsize=(3.2 * len(columns), 2.4 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    hop = mel_settings(sample_rate)["hop_length"]
    for r, (title, versions) in enumerate(rows):
        ref = versions.get(columns[0])
        vmax = float(log_mel_spectrogram(ref, sample_rate).max()) if ref is not None and len(ref) else None
        for c, col in enumerate(columns):
            ax = axes[r][c]
            wav = versions.get(col)
            if wav is None or not len(wav):
                ax.set_axis_off()
                continue
            spec = log_mel_spectrogram(wav, sample_rate)
            top = vmax if vmax is not None else float(spec.max())
            ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=top - 12, vmax=top,
                      extent=(0, spec.shape[1] * hop / sample_rate, 0, spec.shape[0]))
            note = (notes[r].get(col, "") if notes else "")
            label = f"{title} {note}".strip()
            ax.set_title(f"{col}\n{label}" if r == 0 else label, fontsize=8)
            ax.tick_params(labelsize=7)
            if c == 0:
                ax.set_ylabel("mel band", fontsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("s", fontsize=7)
    save_png(fig, path)
    return Path(path)


def plot_codebook_usage(path: str | os.PathLike, histogram: Sequence[int]) -> Path:
    """Bar plot of code counts sorted from most to least used (log scale), [K] counts."""
    from matplotlib.figure import Figure

    counts = np.sort(np.asarray(histogram))[::-1]
    fig = Figure(figsize=(7, 3), layout="constrained")
    ax = fig.subplots()
    used = int((counts > 0).sum())
    ax.bar(np.arange(len(counts)), np.maximum(counts, 0), width=1.0, color="tab:blue")
    if counts.max() > 0:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    ax.set_xlabel("codes, most to least used")
    ax.set_ylabel("count")
    ax.set_title(f"codebook usage: {used} of {len(counts)} codes in use", fontsize=9)
    save_png(fig, path)
    return Path(path)


def choose_clips(clips: Sequence[Any], num_clips: int) -> list[int]:
    """Indices of ``num_clips`` clips to show: the first clip of each speaker first, then the
    following clips in order."""
    chosen: list[int] = []
    seen: set[Any] = set()
    for i, c in enumerate(clips):
        if len(chosen) < num_clips and c.speaker not in seen:
            chosen.append(i)
            seen.add(c.speaker)
    for i in range(len(clips)):
        if len(chosen) >= num_clips:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


#: Versions shown per clip (key in ``examples`` -> label), after the original.
SHOWN_VERSIONS = (("vqaudio", "reconstruction"), ("conversion", "conversion"), ("infilled", "infilled"),
                  ("codec2-1200", "codec2-1200"))


def _versions(i: int, wavs: Sequence[np.ndarray], examples: dict[str, Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """Clip ``i``'s original and the versions of :data:`SHOWN_VERSIONS` present (label -> wav)."""
    versions = {"original": wavs[i]}
    for key, label in SHOWN_VERSIONS:
        if key in examples and len(examples[key][i]):
            versions[label] = examples[key][i]
    return versions


def write_listening_page(
    out_dir: str | os.PathLike,
    report: dict[str, Any],
    clips: Sequence[Any],
    wavs: Sequence[np.ndarray],
    examples: dict[str, Sequence[np.ndarray]],
    sample_rate: int,
    num_clips: int = 3,
    conversion_targets: dict[int, str] | None = None,
    matrix: dict[str, Any] | None = None,
) -> Path:
    """``report.html``: a static listening page beside the report, with its files in ``listen/``.

    For :func:`choose_clips` clips (one per speaker first): a log-mel spectrogram row
    (``listen/UTT.png``) and an audio player per version: original, reconstruction, the
    conversion (to ``conversion_targets[i]``), the clip with its middle infilled by a diffusion
    prior (``"infilled"`` of ``report["generation"]`` or of one of ``report["generations"]``) and Codec 2 at 1200 bit/s when present (16-bit
    WAVs, ``listen/UTT/*.wav``). Above them, the headline scores of every system and of the
    conversions; below them, with ``matrix``, the conversion matrix (a row per clip: its
    original, then the clip decoded in every voice; the clip's own voice is its reconstruction;
    ``listen/matrix/UTT/as_SPEAKER.wav``), and with a prior, one sample per requested speaker
    of each prior (``listen/samples/``). Relative links only, so the folder can be copied or
    served as it is.

    Args:
        report: the evaluation report (``systems``, ``conversion``, ``checkpoint``, ``data``).
        clips, wavs: the evaluated clips and their audio ([T] float32 at ``sample_rate``).
        examples: system name (``"vqaudio"``, ``"conversion"``, ``"codec2-1200"``...) -> [T]
            float32 output per clip (empty where there is none).
        matrix: ``{"clips": [clip index], "speakers": [voice], "outputs": [[T] float32 per
            voice] per clip}``, or None.

    Returns:
        the page's path.
    """
    import html

    from vqaudio.audio import save_audio

    out_dir = Path(out_dir)
    esc = html.escape
    gens = report.get("generations") or [report.get("generation") or {}]
    infilled = next((g["infilled"] for g in gens if g.get("infilled")), {})
    spans = dict(zip(infilled.get("clips", []), infilled.get("spans", [])))
    codes_per_second = (report.get("codebook") or {}).get("codes_per_second")
    rows = []
    for i in choose_clips(clips, num_clips):
        utt = clips[i].utterance_id
        versions = _versions(i, wavs, examples)
        target = (conversion_targets or {}).get(i)
        image = f"listen/{utt}.png"
        plot_spectrograms(out_dir / image, [(utt, versions)], sample_rate,
                          [{"conversion": f"-> {target}"} if target else {}])
        cells = []
        for label, wav in versions.items():
            name = f"conversion_to_{target}" if label == "conversion" and target else label
            rel = f"listen/{utt}/{name}.wav"
            save_audio(out_dir / rel, np.asarray(wav, np.float32), sample_rate)
            title = f"conversion to {target}" if label == "conversion" and target else label
            if label == "infilled" and utt in spans and codes_per_second:
                a, b = (x / codes_per_second for x in spans[utt])
                title = f"infilled {a:.2f}-{b:.2f} s (diffusion prior)"
            cells.append(f'<td><div>{esc(title)}</div><audio controls preload="none" src="{esc(rel)}"></audio></td>')
        speaker = f" ({esc(str(clips[i].speaker))})" if clips[i].speaker else ""
        rows.append(f'<section><h3>{esc(utt)}{speaker}</h3>'
                    f'<img src="{esc(image)}" alt="log-mel spectrograms of {esc(utt)}">'
                    f'<table><tr>{"".join(cells)}</tr></table></section>')

    score_keys = (("bitrate", "kbit/s", "kbps"), ("stoi", "STOI", ".3f"),
                  ("speaker_identification", "speaker ID", ".3f"), ("digit_accuracy", "digit acc", ".3f"),
                  ("wer", "WER", ".3f"))
    head = "".join(f"<th>{label}</th>" for _, label, _ in score_keys)
    body = "".join(
        f"<tr><td>{esc(name)}</td>"
        + "".join(f"<td>{esc(_fmt(res.get(k), fmt))}</td>" for k, _, fmt in score_keys) + "</tr>"
        for name, res in report.get("systems", {}).items() if "skipped" not in res
    )
    conv = report.get("conversion") or {}
    conv_line = (f"<p>Speaker conversion, {conv['pairs']} pairs: identified as the target "
                 f"{esc(_fmt(conv.get('identified_as_target'), '.3f'))}, {esc(_intel(conv))}.</p>" if conv else "")
    ck = report.get("checkpoint") or {}
    data = report.get("data", {})
    samples = _prior_sample_rows(out_dir, report, esc)
    matrix_rows = _matrix_rows(out_dir, matrix, clips, wavs, sample_rate, esc) if matrix else ""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>vqaudio listening page</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:1em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{padding:4px 8px;border:1px solid #ccc;vertical-align:top}}
img{{max-width:100%}}audio{{width:220px}}section{{margin:1.5em 0}}</style></head>
<body><h1>vqaudio listening page</h1>
<p>Checkpoint {esc(str(ck.get('path') or 'in memory'))} (id {esc(str(ck.get('checkpoint_id')))});
data {esc(str(data.get('data')))} ({esc(str(data.get('split')))} split, {esc(str(data.get('clips')))} clips),
{sample_rate} Hz. Full tables: <a href="report.md">report.md</a>.</p>
<table><tr><th>system</th>{head}</tr>{body}</table>
{conv_line}
<h2>Clips</h2>
{"".join(rows)}
{matrix_rows}
{samples}
</body></html>
"""
    path = out_dir / "report.html"
    atomic_write_text(path, page)
    return path


def _matrix_rows(out_dir: Path, matrix: dict[str, Any], clips: Sequence[Any], wavs: Sequence[np.ndarray],
                 sample_rate: int, esc) -> str:
    """The listening page's conversion matrix (see :func:`write_listening_page`): one table,
    a row per clip (original, then every voice), its audio written to ``listen/matrix/``."""
    from vqaudio.audio import save_audio

    voices = matrix["speakers"]
    head = "".join(f"<th>as {esc(str(v))}</th>" for v in voices)
    body = []
    for i, outs in zip(matrix["clips"], matrix["outputs"]):
        utt, own = clips[i].utterance_id, clips[i].speaker
        cells = []
        for name, label, wav in [("original", "original", wavs[i])] + [
                (f"as_{v}", "reconstruction" if v == own else f"as {v}", o) for v, o in zip(voices, outs)]:
            rel = f"listen/matrix/{utt}/{name}.wav"
            save_audio(out_dir / rel, np.asarray(wav, np.float32), sample_rate)
            cells.append(f'<td><div>{esc(label)}</div><audio controls preload="none" src="{esc(rel)}"></audio></td>')
        speaker = f" ({esc(str(own))})" if own is not None else ""
        body.append(f"<tr><th>{esc(utt)}{speaker}</th>{''.join(cells)}</tr>")
    return ("<h2>Conversion matrix</h2><p>Each row: a clip, then its codes decoded in every voice of the "
            "checkpoint (in its own voice: the reconstruction).</p>"
            f'<div style="overflow-x:auto"><table><tr><th>clip</th><th>original</th>{head}</tr>{"".join(body)}'
            "</table></div>")


def _prior_sample_rows(out_dir: Path, report: dict[str, Any], esc) -> str:
    """The listening page's section of prior samples: the first sample of each speaker from
    each prior of ``report["generations"]`` (or the one of ``report["generation"]``), copied
    from ``audio/generation[/LABEL]/`` into ``listen/samples[/LABEL]/``; empty without a prior."""
    import shutil

    gens = report.get("generations") or ([report["generation"]] if report.get("generation") else [])
    rows = []
    for g in gens:
        label = g.get("label", "")
        src = out_dir / "audio" / "generation" / label
        cells = []
        for wav in sorted(src.glob("*__0.wav")) if src.is_dir() else []:
            rel = Path("listen") / "samples" / label / f"{wav.stem.split('__')[0]}.wav"
            (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wav, out_dir / rel)
            cells.append(f'<td><div>{esc(rel.stem)}</div><audio controls preload="none" src="{esc(rel.as_posix())}"></audio></td>')
        if cells:
            p = g.get("prior") or {}
            kind = prior_sampling_text(p)
            title = f"{label or p.get('path') or 'prior'} ({kind}): identified as the requested speaker " \
                    f"{_fmt(g.get('identified_as_requested'), '.3f')}"
            rows.append(f"<section><h3>{esc(title)}</h3><table><tr>{''.join(cells)}</tr></table></section>")
    return "<h2>Prior samples (one per requested speaker)</h2>" + "".join(rows) if rows else ""


def write_plots(
    out_dir: str | os.PathLike,
    clips: Sequence[Any],
    wavs: Sequence[np.ndarray],
    examples: dict[str, Sequence[np.ndarray]],
    sample_rate: int,
    codebook: dict[str, Any] | None,
    num_clips: int = 3,
    conversion_targets: dict[int, str] | None = None,
) -> list[str]:
    """Spectrograms of a few clips (one per speaker first) and the codebook histogram.

    Versions shown: original, vqaudio (reconstruction), conversion, and Codec 2 at 1200 bit/s
    when present (:data:`SHOWN_VERSIONS`); ``conversion_targets`` maps a clip index to the speaker it was converted to
    (shown in the row title). Returns the written paths relative to ``out_dir``.
    """
    out_dir = Path(out_dir)
    written = []
    rows = []
    row_notes: list[dict[str, str]] = []
    for i in choose_clips(clips, num_clips):
        rows.append((clips[i].utterance_id, _versions(i, wavs, examples)))
        target = (conversion_targets or {}).get(i)
        row_notes.append({"conversion": f"-> {target}"} if target else {})
    if rows and num_clips > 0:
        plot_spectrograms(out_dir / "plots" / "spectrograms.png", rows, sample_rate, row_notes)
        written.append("plots/spectrograms.png")
    if codebook is not None:
        plot_codebook_usage(out_dir / "plots" / "codebook_usage.png", codebook["histogram"])
        written.append("plots/codebook_usage.png")
    return written
