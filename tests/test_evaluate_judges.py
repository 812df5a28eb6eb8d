"""The pretrained judges of ``vqaudio evaluate`` on real FSDD clips: speaker (resemblyzer) and
speech recognition (pocketsphinx), plus the centroid and WER arithmetic (no package needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from vqaudio.evaluate.judges import (
    DigitDetector,
    Recognizer,
    SpeakerCentroids,
    SpeakerJudge,
    edit_distance,
    normalize_text,
    word_error_rate,
)
from vqaudio.evaluate.optional import INSTALL_HINT, available
from vqaudio.evaluate.pipeline import DIGIT_WORDS

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "fsdd" / "recordings"
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def needs(module: str):
    return pytest.mark.skipif(not available(module), reason=f"optional package for '{module}' not installed ({INSTALL_HINT})")


def clip(digit: int, speaker: str, take: int) -> np.ndarray:
    return sf.read(str(SAMPLE / f"{digit}_{speaker}_{take}.wav"), dtype="float32")[0]


def test_word_error_rate_and_edit_distance() -> None:
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert normalize_text("Please, call Stella-now!") == ["please", "call", "stella", "now"]
    assert word_error_rate(["the cat sat", "on the mat"], ["the cat sat", "on the mat"]) == 0.0
    assert word_error_rate(["the cat sat", "on the mat"], ["the bat sat down", ""]) == pytest.approx(5 / 6)
    assert math.isnan(word_error_rate([""], ["x"]))
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


def test_centroids_leave_the_judged_utterance_out() -> None:
    e = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [np.nan, np.nan]])
    c = SpeakerCentroids(e, ["a", "a", "b", "b"])
    assert c.names == ["a", "b"]
    full = c.centroids()
    np.testing.assert_allclose(full[0], np.array([1.6, 0.8]) / np.linalg.norm([1.6, 0.8]))
    np.testing.assert_allclose(full[1], [0.0, 1.0])  # the NaN row is ignored
    np.testing.assert_allclose(c.centroids(exclude=0)[0], [0.6, 0.8])
    assert c.similarity(e[1], "a", exclude=1) == pytest.approx(0.6)
    assert c.identify(e[1]) == "a"
    # with its own utterance left out, clip 1 is closer to b than to a's remaining clip
    assert c.identify(e[1], exclude=1) == "b"
    assert c.identify(np.array([0.5, 0.9]), exclude=0) == "a"
    assert c.identify(e[3]) is None
    # a speaker left with no reference has a NaN centroid and is never chosen
    assert c.has_centroid("a", exclude=0) and not c.has_centroid("zz")
    c2 = SpeakerCentroids(e[:3], ["a", "a", "b"])
    assert not c2.has_centroid("b", exclude=2) and c2.has_centroid("b")
    assert np.isnan(c2.centroids(exclude=2)[1]).all()
    assert c2.identify(np.array([0.0, 1.0]), exclude=2) == "a"


@needs("resemblyzer")
def test_speaker_judge_identifies_real_speakers() -> None:
    wavs, speakers = [], []
    for s in SPEAKERS:
        for take, digit in enumerate((1, 4, 7, 9)):
            wavs.append(clip(digit, s, take))
            speakers.append(s)
    judge = SpeakerJudge()
    emb = judge.embed(wavs + [np.zeros(4000, np.float32)], 8000)
    assert emb.shape == (len(wavs) + 1, 256)
    assert np.isnan(emb[-1]).all()  # silence has no speaker
    emb = emb[:-1]
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # batching does not change an embedding
    np.testing.assert_allclose(judge.embed(wavs[:1], 8000)[0], emb[0], atol=1e-5)
    centroids = SpeakerCentroids(emb, speakers)
    correct = [centroids.identify(emb[i], exclude=i) == s for i, s in enumerate(speakers)]
    assert np.mean(correct) >= 0.8, np.mean(correct)
    same = [centroids.similarity(emb[i], s, exclude=i) for i, s in enumerate(speakers)]
    other = [centroids.similarity(emb[i], SPEAKERS[(SPEAKERS.index(s) + 1) % 6]) for i, s in enumerate(speakers)]
    assert np.mean(same) > np.mean(other) + 0.05


@needs("pocketsphinx")
def test_digit_grammar_recognises_original_clips() -> None:
    rec = Recognizer(DIGIT_WORDS)
    wavs, digits = [], []
    for i, s in enumerate(SPEAKERS):
        for digit in range(10):
            if (digit + i) % 3 == 0:
                wavs.append(clip(digit, s, (digit + i) % 5))
                digits.append(digit)
    hyps = rec.recognize(wavs, 8000)
    assert all(h in DIGIT_WORDS or h == "" for h in hyps)
    accuracy = np.mean([h == DIGIT_WORDS[d] for h, d in zip(hyps, digits)])
    assert accuracy >= 0.6, (accuracy, hyps)
    # deterministic: the same clip gives the same words, whatever came before
    assert rec(wavs[0], 8000) == hyps[0]
    with pytest.raises(ValueError, match="dictionary"):
        Recognizer(["zero", "qwxzy"])(wavs[0], 8000)


@needs("pocketsphinx")
def test_free_speech_recogniser_returns_words() -> None:
    rec = Recognizer(None)
    text = rec(np.concatenate([clip(3, "theo", 0), clip(8, "theo", 1)]), 8000)
    assert isinstance(text, str) and text == text.lower()
    assert "(" not in text
    # a clip's words do not depend on what was recognised before it (the feature state is reset)
    rec(0.05 * np.random.default_rng(1).standard_normal(8000).astype(np.float32), 8000)
    assert rec(np.concatenate([clip(3, "theo", 0), clip(8, "theo", 1)]), 8000) == text


@needs("pocketsphinx")
def test_digit_detector_accepts_digits_and_rejects_noise() -> None:
    detector = DigitDetector(DIGIT_WORDS)
    heard = [detector(clip(d, s, 1), 8000) for d, s in zip(range(10), SPEAKERS * 2)]
    assert sum(heard) >= 2, heard
    rng = np.random.default_rng(0)
    assert not any(detector((0.05 * rng.standard_normal(4000)).astype(np.float32), 8000) for _ in range(4))
