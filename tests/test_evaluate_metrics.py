"""Metrics, baselines and the optional-package errors of ``vqaudio.evaluate`` on real FSDD clips.

The third-party metrics need the ``eval`` extra; tests of a metric whose package is missing
are skipped with the reason (the missing-package error itself is tested without them).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vqaudio.audio import resample
from vqaudio.evaluate import metrics as M
from vqaudio.evaluate.baselines import Codec2, Opus, OriginalAudio, baseline_available, make_baseline
from vqaudio.evaluate.optional import INSTALL_HINT, MissingExtraError, available, require

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "fsdd" / "recordings"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def needs(module: str):
    return pytest.mark.skipif(not available(module), reason=f"optional package for '{module}' not installed ({INSTALL_HINT})")


def clip(digit: int, speaker: str = "jackson", take: int = 0) -> np.ndarray:
    wav, sr = sf.read(str(SAMPLE / f"{digit}_{speaker}_{take}.wav"), dtype="float32")
    assert sr == 8000
    return wav


@pytest.fixture(scope="module")
def joined() -> np.ndarray:
    """About 4 s of one speaker's digits, joined with 0.3 s gaps, 8 kHz."""
    return M.join_clips([clip(d) for d in range(8)], 8000, 0.3)


def add_noise(wav: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    rms = np.sqrt(np.mean(wav.astype(np.float64) ** 2))
    noise = np.random.default_rng(seed).standard_normal(len(wav)) * rms * 10 ** (-snr_db / 20)
    return (wav + noise).astype(np.float32)


SNRS = (30.0, 15.0, 5.0, -5.0)


# ----- alignment and joining -----------------------------------------------------------------


@pytest.mark.parametrize("delay", [37, -21, 0])
def test_estimate_delay_recovers_a_known_shift(delay: int) -> None:
    refs = [clip(d, s) for d in (1, 5) for s in SPEAKERS[:3]]
    outs = [np.roll(np.pad(r, (100, 100)), delay)[100:-100] if delay else r.copy() for r in refs]
    outs = [add_noise(o, 20, seed=k) for k, o in enumerate(outs)]
    assert M.estimate_delay(refs, outs, 8000) == delay


def test_align_removes_delay_and_matches_length() -> None:
    x = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(M.align(x, 3, 5), [3, 4, 5, 6, 7])
    np.testing.assert_array_equal(M.align(x, -2, 4), [0, 0, 0, 1])
    np.testing.assert_array_equal(M.align(x, 8, 4), [8, 9, 0, 0])


def test_group_clips_covers_every_clip_once_per_speaker() -> None:
    durations = [0.5] * 7 + [2.0, 2.0, 0.4]
    speakers = ["a"] * 7 + ["b"] * 3
    groups = M.group_clips(durations, speakers, min_seconds=1.4)
    assert sorted(i for g in groups for i in g) == list(range(10))
    for g in groups:
        assert len({speakers[i] for i in g}) == 1
        assert sum(durations[i] for i in g) >= 1.4
    assert M.join_clips([np.ones(3, np.float32), np.ones(2, np.float32)], 10, 0.2).tolist() == [1, 1, 1, 0, 0, 1, 1]


# ----- identical signals score perfectly; noise lowers the scores monotonically ----------------


def test_spectral_distances_identical_and_monotonic(joined: np.ndarray) -> None:
    assert M.log_mel_l1(joined, joined, 8000) == 0.0
    assert M.mel_cepstral_distortion(joined, joined, 8000) == pytest.approx(0.0, abs=1e-9)
    logmel = [M.log_mel_l1(joined, add_noise(joined, s), 8000) for s in SNRS]
    mcd = [M.mel_cepstral_distortion(joined, add_noise(joined, s), 8000) for s in SNRS]
    assert all(a < b for a, b in zip(logmel, logmel[1:])), logmel
    assert all(a < b for a, b in zip(mcd, mcd[1:])), mcd
    # DTW: a time-stretched copy is closer than a noisy one
    assert M.mel_cepstral_distortion(joined, joined[::2].repeat(2), 8000) < mcd[1]


@needs("pesq")
def test_pesq_identical_and_monotonic(joined: np.ndarray) -> None:
    assert M.pesq_score(joined, joined, 8000, "nb") == pytest.approx(M.PESQ_MAX["nb"], abs=1e-3)
    wb = resample(joined, 8000, 16000)
    assert M.pesq_score(wb, wb, 16000, "wb") == pytest.approx(M.PESQ_MAX["wb"], abs=1e-3)
    scores = [M.pesq_score(joined, add_noise(joined, s), 8000, "nb") for s in SNRS]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    with pytest.raises(ValueError, match="16 kHz"):
        M.pesq_score(joined, joined, 8000, "wb")
    assert math.isnan(M.pesq_score(joined, np.zeros_like(joined), 8000)) or M.pesq_score(joined, np.zeros_like(joined), 8000) < 1.5


@needs("pystoi")
def test_stoi_estoi_identical_and_monotonic(joined: np.ndarray) -> None:
    for extended in (False, True):
        assert M.stoi_score(joined, joined, 8000, extended) == pytest.approx(1.0, abs=1e-6)
        scores = [M.stoi_score(joined, add_noise(joined, s), 8000, extended) for s in SNRS]
        assert all(a > b for a, b in zip(scores, scores[1:])), scores
    # one short clip holds too little speech for STOI: NaN, not a misleading 1e-5
    short = clip(3)[:2400]  # 0.3 s
    assert math.isnan(M.stoi_score(short, short, 8000))
    with pytest.raises(ValueError, match="one length"):
        M.stoi_score(joined, joined[:-1], 8000)


@needs("visqol")
def test_visqol_identical_and_monotonic(joined: np.ndarray) -> None:
    visqol = M.Visqol()
    assert visqol(joined, joined, 8000) == pytest.approx(5.0, abs=1e-6)
    scores = [visqol(joined, add_noise(joined, s), 8000) for s in (30.0, 10.0, -5.0)]
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


# ----- baselines -----------------------------------------------------------------------------


def test_original_and_unknown_baseline() -> None:
    x = clip(2)
    y = OriginalAudio()(x, 8000)
    np.testing.assert_array_equal(x, y)
    assert y is not x
    assert OriginalAudio().bitrate(16000) == 256000
    with pytest.raises(ValueError, match="codec2-1200"):
        make_baseline("mp3-128k")
    assert make_baseline("codec2-700C").bitrate(8000) == 700
    assert make_baseline("opus-6k").name == "opus-6k"


@needs("pycodec2")
@needs("pesq")
def test_codec2_modes_delay_and_quality_order(joined: np.ndarray) -> None:
    out = {m: Codec2(m)(joined, 8000) for m in ("3200", "1200", "700C")}
    for m, y in out.items():
        assert y.dtype == np.float32 and abs(len(y) - len(joined)) <= 320
        assert np.abs(y).max() > 0.01
    delay = M.estimate_delay([joined], [out["1200"]], 8000)
    assert 80 <= delay <= 320  # Codec 2 delays its output by 10-40 ms
    pesq = {m: M.pesq_score(joined, M.align(y, delay, len(joined)), 8000) for m, y in out.items()}
    assert pesq["3200"] > pesq["700C"] > 1.5, pesq
    # other rates go through 8 kHz and come back at the input rate
    wb = resample(joined, 8000, 16000)
    y16 = Codec2("1200")(wb, 16000)
    assert abs(len(y16) - len(wb)) <= 640


@pytest.mark.skipif(not Opus.available(), reason="opusenc/opusdec not installed (apt-get install opus-tools)")
@needs("pesq")
def test_opus_baseline(joined: np.ndarray) -> None:
    y = Opus(6)(joined, 8000)
    assert len(y) == len(joined)
    assert M.estimate_delay([joined], [y], 8000) == 0
    assert 2.0 < M.pesq_score(joined, y, 8000) < M.PESQ_MAX["nb"]


def test_opus_unavailable_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    import vqaudio.evaluate.baselines as B

    monkeypatch.setattr(B, "which", lambda name: None)
    assert "opus-tools" in baseline_available(Opus(6))
    with pytest.raises(B.BaselineUnavailable, match="opus-tools"):
        Opus(6)(clip(1), 8000)


# ----- missing optional packages -------------------------------------------------------------


@pytest.mark.parametrize("module", ["pesq", "pystoi", "visqol", "pycodec2", "resemblyzer", "pocketsphinx"])
def test_missing_package_names_the_extra(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingExtraError) as err:
        require(module)
    assert 'pip install -e ".[eval]"' in str(err.value)
    assert err.value.package in str(err.value)
    assert not available(module)


def test_metric_without_its_package_raises_the_named_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pesq", None)
    with pytest.raises(MissingExtraError, match=r'\[eval\]'):
        M.pesq_score(clip(1), clip(1), 8000)
    monkeypatch.setitem(sys.modules, "pycodec2", None)
    with pytest.raises(MissingExtraError, match="pycodec2"):
        Codec2("1200")(clip(1), 8000)
    assert "pycodec2" in baseline_available(Codec2("1200"))


def test_output_level_peak_rms_and_clipping() -> None:
    t = np.arange(8000) / 8000
    sine = 0.5 * np.sin(2 * np.pi * 200 * t)
    loud = np.clip(2 * sine, -0.995, 0.995)
    level = M.output_level([sine, loud, np.zeros(0)])
    assert level["peak"] == pytest.approx(0.995) and level["clipped_share"] == 0.5
    assert M.rms_dbfs(sine) == pytest.approx(20 * math.log10(0.5 / math.sqrt(2)), abs=1e-3)
    assert level["rms_dbfs"] == pytest.approx(np.median([M.rms_dbfs(sine), M.rms_dbfs(loud)]))
    assert M.rms_dbfs(np.zeros(10)) == -math.inf
    assert M.output_level([])["peak"] is None


def test_speaker_probe_finds_a_speaker_that_is_there_and_not_one_that_is_not() -> None:
    """Code vectors whose mean depends on the speaker are named far above chance; vectors that
    do not depend on it score near chance; clips are never both fitted and scored."""
    rng = np.random.default_rng(0)
    speakers = [s for s in ("a", "b", "c") for _ in range(10)]
    offset = {"a": 0.0, "b": 1.0, "c": -1.0}
    marked = [rng.normal(offset[s], 1.0, size=(40, 8)) + np.eye(8)[0] * offset[s] for s in speakers]
    blind = [rng.normal(0.0, 1.0, size=(40, 8)) for _ in speakers]
    found = M.speaker_probe(marked, speakers)
    assert found["chance"] == pytest.approx(1 / 3) and (found["fit_clips"], found["test_clips"]) == (15, 15)
    assert found["frame_accuracy"] > 0.8 and found["clip_accuracy"] == 1.0
    none = M.speaker_probe(blind, speakers)
    assert none["frame_accuracy"] < 0.45
    with pytest.raises(ValueError):
        M.speaker_probe(marked, speakers[:-1])
