"""Objective metrics of a degraded waveform against its reference, and the helpers around them.

Signals are 1-D float32 numpy arrays in [-1, 1] at ``sample_rate`` Hz. Metrics from
third-party packages (PESQ, STOI/ESTOI, ViSQOL) are imported when first used and raise
:class:`~vqaudio.evaluate.optional.MissingExtraError` when their package is missing; a
metric that is undefined for a signal (too short, no speech detected) returns NaN instead of
raising, so one odd clip does not stop an evaluation.

Short clips: STOI needs about 0.4 s of speech (30 frames of 384 samples at 10 kHz) and ViSQOL
needs several of its 240 ms patches, so the evaluation scores clips one by one *and* joined
with short gaps of silence (:func:`join_clips`, :func:`group_clips`). Codecs delay their output
(Codec 2 by 20-25 ms); :func:`estimate_delay` finds that delay for a whole set of clips and
:func:`align` removes it before the waveform metrics.

===================  =====================================  ====================
metric               function                               identical signals
===================  =====================================  ====================
PESQ-nb / PESQ-wb    :func:`pesq_score` (P.862.1 / P.862.2)  4.549 / 4.644
STOI / ESTOI         :func:`stoi_score`                      1.0
ViSQOL v3 (speech)   :class:`Visqol`                         5.0
log-mel L1           :func:`log_mel_l1`                      0.0
MCD (DTW)            :func:`mel_cepstral_distortion`         0.0 dB
===================  =====================================  ====================
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np

from vqaudio.audio import resample
from vqaudio.evaluate.optional import require

#: PESQ of a signal against itself (the top of its MOS-LQO scale), narrow-band and wide-band.
PESQ_MAX = {"nb": 4.548638343811035, "wb": 4.643888473510742}


# ----- alignment and joining ----------------------------------------------------------------


def _envelope(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Amplitude envelope: |wav| smoothed over 2 ms, mean removed. [T] -> [T] float64."""
    width = max(1, int(round(0.002 * sample_rate)))
    env = np.convolve(np.abs(wav.astype(np.float64)), np.ones(width) / width, mode="same")
    return env - env.mean()


def estimate_delay(
    references: Sequence[np.ndarray],
    outputs: Sequence[np.ndarray],
    sample_rate: int,
    max_delay_seconds: float = 0.05,
) -> int:
    """The delay of ``outputs`` behind ``references``, in samples, shared by the whole set.

    Codecs delay every output by the same number of samples. The delay is the lag that
    maximises the sum over clips of the normalised cross-correlation of the two amplitude
    envelopes (|x| smoothed over 2 ms). Envelopes rather than waveforms, because parametric
    codecs (Codec 2) and sampled WaveNet outputs do not keep the waveform's phase.

    Args:
        references: N reference clips, each [T_i] float32.
        outputs: N outputs, each [T'_i] float32 (any length).
        sample_rate: Hz, to convert ``max_delay_seconds``.
        max_delay_seconds: lags searched: ``[-max, +max]``.

    Returns:
        delay in samples; positive when the outputs lag (drop that many leading samples).

    Raises:
        ValueError: the two lists differ in length or are empty.
    """
    if len(references) != len(outputs) or not references:
        raise ValueError(f"need equally many references and outputs, got {len(references)} and {len(outputs)}")
    from scipy.signal import correlate

    max_lag = max(1, int(round(max_delay_seconds * sample_rate)))
    total = np.zeros(2 * max_lag + 1)
    for ref, out in zip(references, outputs):
        if len(ref) == 0 or len(out) == 0:
            continue
        r, o = _envelope(ref, sample_rate), _envelope(out, sample_rate)
        norm = np.linalg.norm(r) * np.linalg.norm(o)
        if norm == 0:
            continue
        c = correlate(o, r, mode="full", method="fft")  # c[k] = sum_n o[n + k - (len(r) - 1)] r[n]
        mid = len(r) - 1
        lo, hi = max(0, mid - max_lag), min(len(c), mid + max_lag + 1)
        total[lo - (mid - max_lag) : hi - (mid - max_lag)] += c[lo:hi] / norm
    return int(np.argmax(total)) - max_lag


def align(output: np.ndarray, delay: int, length: int) -> np.ndarray:
    """Undo a delay and match a length.

    Args:
        output: [T'] float32.
        delay: samples to drop from the start (negative: zeros to prepend).
        length: samples of the result (the reference's length): cropped or zero-padded.

    Returns:
        [length] float32.
    """
    out = output[delay:] if delay >= 0 else np.concatenate([np.zeros(-delay, output.dtype), output])
    if len(out) >= length:
        return np.ascontiguousarray(out[:length], dtype=np.float32)
    return np.concatenate([out, np.zeros(length - len(out), np.float32)]).astype(np.float32)


def group_clips(
    durations: Sequence[float], speakers: Sequence[str | None], min_seconds: float = 3.0
) -> list[list[int]]:
    """Group consecutive clips of the same speaker until each group holds ``min_seconds``.

    Clips are taken in the given order; a speaker's last group may fall short of
    ``min_seconds`` when it is the speaker's only group, else its remainder is merged into
    the previous group.

    Args:
        durations: seconds of each clip.
        speakers: speaker of each clip (None counts as one speaker).
        min_seconds: target length of a group.

    Returns:
        groups of clip indices; every index appears exactly once.
    """
    by_speaker: dict[str | None, list[int]] = {}
    for i, s in enumerate(speakers):
        by_speaker.setdefault(s, []).append(i)
    groups: list[list[int]] = []
    for indices in by_speaker.values():
        own: list[list[int]] = []
        current: list[int] = []
        total = 0.0
        for i in indices:
            current.append(i)
            total += durations[i]
            if total >= min_seconds:
                own.append(current)
                current, total = [], 0.0
        if current:
            if own:
                own[-1].extend(current)
            else:
                own.append(current)
        groups.extend(own)
    return groups


def join_clips(clips: Sequence[np.ndarray], sample_rate: int, gap_seconds: float = 0.1) -> np.ndarray:
    """Concatenate clips with ``gap_seconds`` of silence between them: -> [sum T_i + gaps] float32."""
    gap = np.zeros(int(round(gap_seconds * sample_rate)), np.float32)
    parts: list[np.ndarray] = []
    for i, c in enumerate(clips):
        if i:
            parts.append(gap)
        parts.append(np.asarray(c, np.float32))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


# ----- third-party metrics --------------------------------------------------------------------


def pesq_score(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, mode: str = "nb") -> float:
    """PESQ, ITU-T P.862 (``pesq`` package), as MOS-LQO.

    Narrow-band (``"nb"``, P.862.1 mapping) runs at 8 or 16 kHz, wide-band (``"wb"``, P.862.2)
    at 16 kHz; other rates are resampled (to 8 kHz for nb when below 16 kHz, else 16 kHz).
    PESQ aligns the signals itself.

    Args:
        reference, degraded: [T] float32 at ``sample_rate`` Hz (lengths may differ).
        mode: ``"nb"`` or ``"wb"``.

    Returns:
        MOS-LQO in about [1.0, 4.55] (nb) / [1.0, 4.64] (wb); NaN when PESQ finds no
        utterance or the signal is too short.

    Raises:
        ValueError: unknown mode, or wide-band asked for audio below 16 kHz.
        MissingExtraError: ``pesq`` is not installed.
    """
    if mode not in ("nb", "wb"):
        raise ValueError(f"PESQ mode must be 'nb' or 'wb', got {mode!r}")
    if mode == "wb" and sample_rate < 16000:
        raise ValueError(f"wide-band PESQ needs audio at 16 kHz or more, got {sample_rate} Hz")
    pesq = require("pesq")
    rate = 16000 if (mode == "wb" or sample_rate >= 16000) else 8000
    ref, deg = resample(reference, sample_rate, rate), resample(degraded, sample_rate, rate)
    try:
        return float(pesq.pesq(rate, ref.astype(np.float64), deg.astype(np.float64), mode))
    except (pesq.PesqError, ValueError):
        return math.nan


def stoi_score(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, extended: bool = False) -> float:
    """STOI (Taal et al. 2011) or, with ``extended``, ESTOI (Jensen & Taal 2016), ``pystoi``.

    Args:
        reference, degraded: [T] float32 at ``sample_rate`` Hz, time-aligned, same length
            (use :func:`align`).
        extended: ESTOI instead of STOI.

    Returns:
        intelligibility in [0, 1] (about; ESTOI can dip below 0); NaN when the reference has
        fewer than 30 frames of speech (about 0.4 s) after pystoi drops silent frames.

    Raises:
        ValueError: different lengths.
        MissingExtraError: ``pystoi`` is not installed.
    """
    if len(reference) != len(degraded):
        raise ValueError(f"STOI needs aligned signals of one length, got {len(reference)} and {len(degraded)}")
    pystoi = require("pystoi")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(reference.astype(np.float64), degraded.astype(np.float64), sample_rate, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught):
        return math.nan
    return value


class Visqol:
    """ViSQOL v3 in speech mode (``visqol-python``, a Python port of Google's ViSQOL 3.3).

    Speech mode works at 16 kHz (inputs are resampled) and maps the similarity to MOS-LQO with
    the polynomial of ViSQOL's speech mode (the optional TFLite lattice model is not used, so
    that no extra runtime is needed). Needs a few seconds of speech: score joined clips.
    Costs about 0.1-0.3 s of CPU per second of audio.

    Args:
        num_threads: numba threads of visqol's compiled loops during a call (restored after);
            1 by default, over twice as fast as 2 threads when other processes share the CPU.

    Raises:
        MissingExtraError: ``visqol-python`` is not installed (on first call).
    """

    SAMPLE_RATE = 16000

    def __init__(self, num_threads: int | None = 1) -> None:
        self.num_threads = num_threads
        self._api = None

    def __call__(self, reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
        """MOS-LQO in [1, 5] (5.0 for identical signals), NaN when ViSQOL finds no patch to compare.

        Args:
            reference, degraded: [T] float32 at ``sample_rate`` Hz.
        """
        if self._api is None:
            visqol = require("visqol")  # undoes visqol's NUMBA_THREADING_LAYER setting
            api = visqol.VisqolApi()
            api.create(mode="speech", use_lattice_model=False)
            self._api = api
        ref = resample(reference, sample_rate, self.SAMPLE_RATE).astype(np.float64)
        deg = resample(degraded, sample_rate, self.SAMPLE_RATE).astype(np.float64)
        with _numba_threads(self.num_threads):
            try:
                return float(self._api.measure_from_arrays(ref, deg, self.SAMPLE_RATE).moslqo)
            except (IndexError, ValueError, ZeroDivisionError, FloatingPointError):
                return math.nan


@contextlib.contextmanager
def _numba_threads(num_threads: int | None) -> Iterator[None]:
    """numba's thread count inside the block (restored after); None leaves it."""
    if num_threads is None:
        yield
        return
    try:
        import numba
    except ImportError:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(min(num_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(old)


# ----- spectral distances (librosa) -----------------------------------------------------------


def mel_settings(sample_rate: int) -> dict[str, int]:
    """STFT/mel settings used here: 25 ms windows (FFT size the next power of two), 10 ms hop,
    40 mel bands up to 8 kHz rate, 80 above. Example: 8000 Hz -> n_fft 256, hop 80, 40 mels."""
    n_fft = 1 << max(0, math.ceil(math.log2(0.025 * sample_rate)))
    return {"n_fft": n_fft, "hop_length": max(1, sample_rate // 100), "n_mels": 40 if sample_rate <= 8000 else 80}


def log_mel_spectrogram(wav: np.ndarray, sample_rate: int, floor: float = 1e-5) -> np.ndarray:
    """Natural-log mel power spectrogram: [T] -> [n_mels, frames] float32 (see :func:`mel_settings`)."""
    import librosa

    s = mel_settings(sample_rate)
    mel = librosa.feature.melspectrogram(
        y=np.asarray(wav, np.float32), sr=sample_rate, n_fft=s["n_fft"], hop_length=s["hop_length"],
        n_mels=s["n_mels"], power=2.0, center=True,
    )
    return np.log(np.maximum(mel, floor)).astype(np.float32)


def log_mel_l1(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float:
    """Mean absolute difference of natural-log mel power spectrograms (nats), frame by frame.

    Args:
        reference, degraded: [T] float32 at ``sample_rate`` Hz, time-aligned, same length.

    Returns:
        >= 0; 0 for identical signals.

    Raises:
        ValueError: different lengths.
    """
    if len(reference) != len(degraded):
        raise ValueError(f"log-mel L1 needs aligned signals of one length, got {len(reference)} and {len(degraded)}")
    a, b = log_mel_spectrogram(reference, sample_rate), log_mel_spectrogram(degraded, sample_rate)
    return float(np.mean(np.abs(a - b)))


def mel_cepstrum(wav: np.ndarray, sample_rate: int, order: int = 24, dynamic_range_db: float = 50.0) -> np.ndarray:
    """Mel-cepstrum ``c_1 .. c_order`` per frame: [T] -> [frames, order] float64.

    ``c = DCT-II(ortho)`` of the natural-log mel *amplitude* spectrum (mel settings of
    :func:`mel_settings`), ``c_0`` (energy) dropped. Mel power is floored at
    ``dynamic_range_db`` below the signal's own peak, so the cepstrum ignores the overall gain
    and whatever lies under the floor (recording noise, silence).
    """
    import librosa
    from scipy.fft import dct

    s = mel_settings(sample_rate)
    mel = librosa.feature.melspectrogram(
        y=np.asarray(wav, np.float32), sr=sample_rate, n_fft=s["n_fft"], hop_length=s["hop_length"],
        n_mels=s["n_mels"], power=2.0, center=True,
    ).astype(np.float64)
    floor = max(float(mel.max()), 1e-20) * 10.0 ** (-dynamic_range_db / 10.0)
    log_amp = 0.5 * np.log(np.maximum(mel, floor))
    return dct(log_amp, type=2, norm="ortho", axis=0)[1 : order + 1].T


def mel_cepstral_distortion(reference: np.ndarray, degraded: np.ndarray, sample_rate: int, order: int = 24) -> float:
    """Mel-cepstral distortion in dB after DTW alignment (Kubichek 1993).

    ``MCD = (10 / ln 10) * sqrt(2 * sum_{d=1..order} (c_d - c'_d)^2)``, averaged over the frame
    pairs of the DTW path (``librosa.sequence.dtw``, Euclidean cost) between the two
    mel-cepstra (:func:`mel_cepstrum`, each floored 50 dB below its own peak). The cepstra
    come from a mel filterbank, not SPTK's all-pass warped ``mcep``, so values compare
    systems within one report, not with the absolute figures of papers (they run higher:
    Codec 2 at 1200 bit/s scores about 20 dB on FSDD, white noise at 20 dB SNR about 14 dB).

    Args:
        reference, degraded: [T], [T'] float32 at ``sample_rate`` Hz (lengths may differ).

    Returns:
        dB >= 0; 0 for identical signals.
    """
    import librosa

    a, b = mel_cepstrum(reference, sample_rate, order), mel_cepstrum(degraded, sample_rate, order)
    _, path = librosa.sequence.dtw(X=a.T, Y=b.T, metric="euclidean")
    diff = a[path[:, 0]] - b[path[:, 1]]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(diff**2, axis=1))))


#: A clip counts as clipped when any sample reaches this share of full scale.
CLIPPING_LEVEL = 0.99


def rms_dbfs(wav: np.ndarray) -> float:
    """RMS level of ``wav`` [T] in dB relative to full scale (a full-scale square wave: 0 dB;
    silence: -inf)."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(wav, np.float64))))) if len(wav) else 0.0
    return 20 * math.log10(rms) if rms > 0 else -math.inf


def output_level(wavs: Sequence[np.ndarray]) -> dict[str, float | None]:
    """Level of a set of clips, to catch outputs that are too loud, too quiet or clipped.

    Args:
        wavs: [T_i] float arrays in [-1, 1] (empty ones are left out).

    Returns:
        ``peak`` (the largest ``|x|`` of all clips), ``peak_median`` (median of the clips'
        peaks), ``rms_dbfs`` (median of the clips' RMS levels, :func:`rms_dbfs`) and
        ``clipped_share`` (share of clips with a sample at or above :data:`CLIPPING_LEVEL`); None
        each when there is no clip.
    """
    wavs = [np.asarray(w, np.float32) for w in wavs if len(w)]
    if not wavs:
        return {"peak": None, "peak_median": None, "rms_dbfs": None, "clipped_share": None}
    peaks = np.array([float(np.abs(w).max()) for w in wavs])
    return {
        "peak": float(peaks.max()),
        "peak_median": float(np.median(peaks)),
        "rms_dbfs": float(np.median([rms_dbfs(w) for w in wavs])),
        "clipped_share": float(np.mean(peaks >= CLIPPING_LEVEL)),
    }


def speaker_probe(
    vectors: Sequence[np.ndarray], speakers: Sequence[str], seed: int = 0
) -> dict[str, float | int | None]:
    """How much of the speaker a sequence of code vectors carries: the held-out accuracy of a
    linear probe (scikit-learn's multinomial logistic regression on standardised features),
    which predicts the speaker of each frame and of each clip (from the mean of its frames).

    Each speaker's clips are split alternately (in the order given) into a half the probe is
    fitted on and a half it is scored on, so no clip is in both.

    Args:
        vectors: per clip, [T'_i, D] float code vectors (clips without frames are left out).
        speakers: the speaker of each clip.
        seed: for the solver.

    Returns:
        ``frame_accuracy`` (share of held-out frames whose speaker it names), ``clip_accuracy``
        (share of held-out clips, from their mean vectors), ``chance`` (1 / number of
        speakers), ``speakers``, ``fit_clips`` and ``test_clips``; the accuracies are None
        with fewer than two speakers that have two clips each.

    Raises:
        ValueError: ``vectors`` and ``speakers`` differ in length.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(vectors) != len(speakers):
        raise ValueError(f"{len(vectors)} clips of vectors, {len(speakers)} speakers")
    seen: dict[str, int] = {}
    fit, test = [], []
    for i, (v, s) in enumerate(zip(vectors, speakers)):
        if len(v) == 0:
            continue
        (fit if seen.get(s, 0) % 2 == 0 else test).append(i)
        seen[s] = seen.get(s, 0) + 1
    names = sorted({speakers[i] for i in test} & {speakers[i] for i in fit})
    res: dict[str, float | int | None] = {"frame_accuracy": None, "clip_accuracy": None,
                                          "chance": 1 / len(seen) if seen else None, "speakers": len(seen),
                                          "fit_clips": len(fit), "test_clips": len(test)}
    if len(names) < 2:
        return res

    def stack(indices, mean: bool):
        xs = [np.asarray(vectors[i], np.float64) for i in indices]
        if mean:
            return np.stack([x.mean(0) for x in xs]), np.array([speakers[i] for i in indices])
        return np.concatenate(xs), np.concatenate([[speakers[i]] * len(x) for i, x in zip(indices, xs)])

    for key, mean in (("frame_accuracy", False), ("clip_accuracy", True)):
        x_fit, y_fit = stack(fit, mean)
        x_test, y_test = stack(test, mean)
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a probe that does not fully converge still measures
            probe.fit(x_fit, y_fit)
        res[key] = float(np.mean(probe.predict(x_test) == y_test))
    return res
