"""Corpora (VCTK 0.80 / 0.92, FSDD, speaker folders), train/validation splits, segment datasets."""

from vqaudio.data.corpus import (
    DIGIT_WORDS,
    FSDD_TEST_TAKES,
    VCTK_MICS,
    Corpus,
    CorpusError,
    Utterance,
    corpus_from_files,
    discover_corpus,
    speaker_table,
    split_corpus,
)
from vqaudio.data.dataset import SegmentDataset, iter_audio

__all__ = [
    "DIGIT_WORDS",
    "FSDD_TEST_TAKES",
    "VCTK_MICS",
    "Corpus",
    "CorpusError",
    "SegmentDataset",
    "Utterance",
    "corpus_from_files",
    "discover_corpus",
    "iter_audio",
    "speaker_table",
    "split_corpus",
]
