"""Figures written during training: log-magnitude spectrograms of original and decoded audio.

Figures are drawn with matplotlib's object API on an Agg canvas (``Figure`` +
``FigureCanvasAgg``), never through ``pyplot``: nothing here selects a backend, opens a window
or keeps figures in global state, so it works on headless machines and in worker processes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np
import torch

from vqaudio._files import atomic_path


def log_spectrogram(
    wav: np.ndarray | torch.Tensor, n_fft: int = 512, hop_length: int = 128, top_db: float = 80.0
) -> np.ndarray:
    """Log-magnitude STFT in dB (Hann window), clipped to ``top_db`` below the maximum.

    Args:
        wav: [T] (or [1, T], [1, 1, T]) float in [-1, 1].
        n_fft: FFT size in samples (frequency resolution ``sample_rate / n_fft`` Hz).
        hop_length: samples between frames.
        top_db: dynamic range kept, in dB.

    Returns:
        [n_fft // 2 + 1, frames] float32 in dB (0 dB = amplitude 1), frames =
        ``1 + T // hop_length`` (centred frames, reflect-padded).

    Raises:
        ValueError: ``wav`` is empty or has more than one channel.
    """
    if isinstance(wav, torch.Tensor):
        x = wav.detach().cpu().float()
    else:
        x = torch.from_numpy(np.asarray(wav, dtype=np.float32))
    if x.dim() > 1 and any(s != 1 for s in x.shape[:-1]):
        raise ValueError(f"expected one channel of audio, got shape {tuple(x.shape)}")
    x = x.reshape(-1)
    if x.numel() == 0:
        raise ValueError("cannot draw the spectrogram of empty audio")
    if x.numel() < n_fft:  # short clips: pad so that one frame fits
        x = torch.nn.functional.pad(x, (0, n_fft - x.numel()))
    spec = torch.stft(
        x, n_fft, hop_length, window=torch.hann_window(n_fft), center=True, pad_mode="reflect",
        return_complex=True,
    ).abs()
    db = 20.0 * torch.log10(spec.clamp(min=1e-5))
    db = torch.maximum(db, db.max() - top_db)
    return db.numpy().astype(np.float32)


def plot_spectrograms(
    path: str | os.PathLike,
    wavs: Mapping[str, np.ndarray | torch.Tensor],
    sample_rate: int,
    title: str | None = None,
    n_fft: int = 512,
    hop_length: int = 128,
) -> Path:
    """Draw one spectrogram panel per waveform, stacked, and write a PNG atomically.

    Args:
        path: output PNG file; its folder is created. Written to a temporary name and renamed.
        wavs: panel title -> waveform [T] float in [-1, 1] at ``sample_rate`` Hz (e.g.
            ``{"original": x, "reconstruction": y}``); panels share the colour scale (dB).
        sample_rate: rate in Hz (axes in seconds and kHz).
        title: figure title.
        n_fft, hop_length: STFT size and hop in samples.

    Returns:
        the path written.

    Raises:
        ValueError: no waveforms, or one that is empty or multi-channel.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not wavs:
        raise ValueError("plot_spectrograms needs at least one waveform")
    specs = {name: log_spectrogram(w, n_fft, hop_length) for name, w in wavs.items()}
    vmax = max(float(s.max()) for s in specs.values())
    vmin = vmax - 80.0
    fig = Figure(figsize=(8, 2.2 * len(specs) + (0.4 if title else 0)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(specs), 1, squeeze=False)[:, 0]
    image = None
    for ax, (name, spec) in zip(axes, specs.items()):
        seconds = spec.shape[1] * hop_length / sample_rate
        image = ax.imshow(
            spec, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax,
            extent=(0.0, seconds, 0.0, sample_rate / 2000.0),
        )
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("kHz")
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="dB", shrink=0.9)
    if title:
        fig.suptitle(title)

    return save_png(fig, path)


def plot_training_curves(path: str | os.PathLike, records: Sequence[Mapping[str, Any]], title: str | None = None) -> Path:
    """Loss curves and codebook use of a training run, as a PNG (written atomically).

    Args:
        path: output PNG file.
        records: the lines of ``metrics.jsonl`` (:func:`vqaudio.runs.read_metrics`): dicts
            with ``step`` and ``train/...`` or ``valid/...`` keys.
        title: figure title.

    Left panel: ``train/reconstruction_loss`` and ``valid/reconstruction_loss`` in bits per
    sample (nats / ln 2). Right panel: ``train/codes_in_use`` (per batch),
    ``train/codes_in_use_window`` and ``valid/codes_in_use``. Missing series are left out.

    Returns:
        the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def series(key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
        pts = [(r["step"], float(r[key]) * scale) for r in records if key in r and r[key] is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, code_ax = fig.subplots(1, 2)
    bits = 1.0 / np.log(2.0)
    for key, label, style in (("train/reconstruction_loss", "train", "-"),
                              ("valid/reconstruction_loss", "validation", "o-")):
        x, y = series(key, bits)
        if x:
            loss_ax.plot(x, y, style, label=label, markersize=3)
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("reconstruction loss (bits / sample)")
    loss_ax.grid(alpha=0.3)
    for key, label, style in (("train/codes_in_use", "per batch", "-"),
                              ("train/codes_in_use_window", "per log window", "--"),
                              ("valid/codes_in_use", "validation set", "o-")):
        x, y = series(key)
        if x:
            code_ax.plot(x, y, style, label=label, markersize=3)
    code_ax.set_xlabel("step")
    code_ax.set_ylabel("codes in use")
    code_ax.grid(alpha=0.3)
    for ax in (loss_ax, code_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_png(fig, path)


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write the matplotlib Figure ``fig`` as ``path`` (PNG, 100 dpi) through a temporary file
    in the same folder, so a reader never sees a half-written image. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)  # render with Agg whatever pyplot's backend is
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png", dpi=100)
    return path
