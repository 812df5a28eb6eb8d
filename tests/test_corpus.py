"""Corpus discovery (VCTK 0.80/0.92, FSDD, speaker folders, file lists) and train/valid splits."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vqaudio.data import (
    CorpusError,
    corpus_from_files,
    discover_corpus,
    speaker_table,
    split_corpus,
)

FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]


def _copy_clips(fsdd_dir: Path, names: list[str], dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(fsdd_dir / "recordings" / n, dst / n)) for n in names]


def test_bundled_fsdd_sample_is_complete(fsdd_sample_dir):
    names = sorted(p.name for p in (fsdd_sample_dir / "recordings").iterdir())
    found = {tuple(re.fullmatch(r"(\d)_([a-z]+)_(\d+)\.wav", n).groups()) for n in names}
    expected = {(str(d), s, str(t)) for d in range(10) for s in FSDD_SPEAKERS for t in range(15)}
    assert found == expected
    assert (fsdd_sample_dir / "ATTRIBUTION.md").read_text().count("CC BY-SA 4.0") >= 1


@pytest.mark.parametrize("sub", ["", "recordings"])
def test_fsdd_layout(fsdd_sample_dir, sub):
    corpus = discover_corpus(fsdd_sample_dir / sub)
    assert corpus.layout == "fsdd"
    assert len(corpus) == 900
    assert corpus.speakers == FSDD_SPEAKERS == speaker_table(corpus)
    by_id = {u.utterance_id: u for u in corpus}
    u = by_id["7_jackson_12"]
    assert (u.speaker, u.text, u.path.name) == ("jackson", "seven", "7_jackson_12.wav")


def test_fsdd_official_split(fsdd_sample_dir):
    corpus = discover_corpus(fsdd_sample_dir)
    train, valid = split_corpus(corpus)  # "auto" -> official for FSDD
    take = lambda u: int(u.utterance_id.split("_")[2])  # noqa: E731
    assert {take(u) for u in valid} == {0, 1, 2, 3, 4}
    assert min(take(u) for u in train) == 5
    assert len(valid) == 300 and len(train) == 600
    assert Counter(u.speaker for u in valid) == {s: 50 for s in FSDD_SPEAKERS}
    assert train.layout == valid.layout == "fsdd"
    # The same split from a plain list of FSDD files.
    files = [u.path for u in corpus]
    t2, v2 = split_corpus(corpus_from_files(files))
    assert [u.path for u in v2] == [u.path for u in valid]


@pytest.mark.parametrize("at_wav_dir", [False, True])
def test_vctk_080(make_vctk_tree, at_wav_dir):
    root = make_vctk_tree("0.80", speakers=("p225", "p226"), num_utterances=3)
    (root / "txt" / "p226" / "p226_002.txt").unlink()  # a missing transcript -> None
    corpus = discover_corpus(root / "wav48" if at_wav_dir else root)
    assert corpus.layout == "vctk-0.80"
    assert corpus.speakers == ["p225", "p226"]
    assert [u.utterance_id for u in corpus] == [
        "p225_001", "p225_002", "p225_003", "p226_001", "p226_002", "p226_003"
    ]
    texts = {u.utterance_id: u.text for u in corpus}
    assert texts["p225_002"] == "One." and texts["p226_003"] == "Two."
    assert texts["p226_002"] is None
    assert all(u.path.suffix == ".wav" and u.path.parent.name == u.speaker for u in corpus)


def test_vctk_092_mics(make_vctk_tree):
    root = make_vctk_tree("0.92", speakers=("p225", "p226"), num_utterances=2)
    # p280-like speaker with mic1 only.
    make_vctk_tree("0.92", speakers=("p280",), num_utterances=2, mics=("mic1",))
    c1 = discover_corpus(root)
    assert c1.layout == "vctk-0.92"
    assert c1.speakers == ["p225", "p226", "p280"]
    assert all(u.path.name == f"{u.utterance_id}_mic1.flac" for u in c1)
    assert {u.utterance_id: u.text for u in c1}["p226_002"] == "One."
    c2 = discover_corpus(root / "wav48_silence_trimmed", mic="mic2")
    assert c2.speakers == ["p225", "p226"]  # p280 has no mic2 files
    assert all(u.path.name.endswith("_mic2.flac") for u in c2)
    assert [u.utterance_id for u in c2] == ["p225_001", "p225_002", "p226_001", "p226_002"]
    assert c2.utterances[0].text == "Zero."
    with pytest.raises(CorpusError, match="mic"):
        discover_corpus(root, mic="mic3")


def test_speaker_folders_and_errors(fsdd_sample_dir, tmp_path):
    root = tmp_path / "spk"
    for spk, fsdd_spk in (("SF1", "george"), ("TM1", "theo")):
        clips = _copy_clips(fsdd_sample_dir, [f"{d}_{fsdd_spk}_5.wav" for d in range(3)], root / spk)
        for i, c in enumerate(clips):
            c.rename(c.with_name(f"10000{i + 1}.wav"))
    (root / "TM1" / "notes.txt").write_text("not audio")
    (root / "SF1" / "._100001.wav").write_bytes(b"macOS resource fork")
    corpus = discover_corpus(root)
    assert corpus.layout == "speaker-folders"
    assert corpus.speakers == ["SF1", "TM1"]
    assert [u.utterance_id for u in corpus] == [f"{s}_10000{i}" for s in ("SF1", "TM1") for i in (1, 2, 3)]
    assert all(u.text is None for u in corpus)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorpusError, match=str(empty)):
        discover_corpus(empty)
    not_audio = tmp_path / "not_audio" / "spk"
    not_audio.mkdir(parents=True)
    (not_audio / "a.txt").write_text("x")
    with pytest.raises(CorpusError, match="no audio"):
        discover_corpus(not_audio.parent)
    flat = tmp_path / "flat"
    _copy_clips(fsdd_sample_dir, ["1_theo_5.wav"], flat)
    (flat / "1_theo_5.wav").rename(flat / "hello.wav")
    with pytest.raises(CorpusError, match="cannot recognise"):
        discover_corpus(flat)
    with pytest.raises(CorpusError, match="no such"):
        discover_corpus(tmp_path / "missing")
    with pytest.raises(CorpusError, match="(?i)not an audio"):
        corpus_from_files([tmp_path])


def test_file_list(fsdd_sample_dir, make_vctk_tree, tmp_path):
    root = make_vctk_tree("0.80", speakers=("p225",), num_utterances=1)
    other = _copy_clips(fsdd_sample_dir, ["3_lucas_5.wav"], tmp_path / "misc")[0]
    other = other.rename(other.with_name("take.wav"))
    fsdd = fsdd_sample_dir / "recordings" / "2_nicolas_9.wav"
    corpus = discover_corpus([fsdd, root / "wav48", other])
    assert corpus.layout == "files" and corpus.root is None
    got = {u.path.name: (u.speaker, u.utterance_id, u.text) for u in corpus}
    assert got == {
        "2_nicolas_9.wav": ("nicolas", "2_nicolas_9", "two"),
        "p225_001.wav": ("p225", "p225_001", None),
        "take.wav": (None, "take", None),
    }
    assert corpus.speakers == ["nicolas", "p225"]
    parent = corpus_from_files([other], speaker_from="parent")
    assert parent.utterances[0].speaker == "misc"


def test_parallel_split_holds_out_same_sentences(tmp_path, fsdd_sample_dir):
    # A VCC-like parallel tree: 3 speakers read sentences 100001..100006 (one speaker misses one).
    root = tmp_path / "vcc"
    for spk, fsdd_spk in (("SF1", "george"), ("SM1", "lucas"), ("TF1", "theo")):
        for i in range(6):
            if spk == "TF1" and i == 2:
                continue
            _copy_clips(fsdd_sample_dir, [f"{i}_{fsdd_spk}_5.wav"], root / spk)
            (root / spk / f"{i}_{fsdd_spk}_5.wav").rename(root / spk / f"10000{i + 1}.wav")
    corpus = discover_corpus(root)
    train, valid = split_corpus(corpus, num_valid_per_speaker=2)
    assert sorted(u.utterance_id for u in valid) == [
        f"{s}_{i}" for s in ("SF1", "SM1", "TF1") for i in ("100005", "100006")
    ]
    seen = {u.utterance_id.split("_")[1] for u in train}
    assert not seen & {"100005", "100006"}
    assert len(train) + len(valid) == len(corpus) == 17
    # Deterministic: discovering and splitting again gives the same result.
    t2, v2 = split_corpus(discover_corpus(root), num_valid_per_speaker=2)
    assert (t2, v2) == (train, valid)
    # Per-speaker: the last ids of each speaker, every speaker held out.
    _, vp = split_corpus(corpus, num_valid_per_speaker=1, method="per-speaker")
    assert [u.utterance_id for u in vp] == ["SF1_100006", "SM1_100006", "TF1_100006"]
    with pytest.raises(CorpusError, match="shared"):
        split_corpus(corpus, num_valid_per_speaker=6, method="parallel")
    with pytest.raises(CorpusError, match="FSDD"):
        split_corpus(corpus, method="official")
    with pytest.raises(CorpusError, match="method"):
        split_corpus(corpus, method="random")


def test_vctk_split_every_speaker(make_vctk_tree):
    root = make_vctk_tree("0.80", speakers=("p225", "p226", "p227"), num_utterances=3)
    corpus = discover_corpus(root)
    train, valid = split_corpus(corpus, num_valid_per_speaker=1)
    assert [u.utterance_id for u in valid] == ["p225_003", "p226_003", "p227_003"]
    assert train.speakers == valid.speakers == corpus.speakers
    with pytest.raises(CorpusError, match="no training utterance"):
        split_corpus(corpus, num_valid_per_speaker=3, method="parallel")


def test_vcc2016(vcc_dir):
    corpus = discover_corpus(vcc_dir)
    assert corpus.layout == "speaker-folders"
    assert len(corpus.speakers) == 10 and len(corpus) == 1620
    train, valid = split_corpus(corpus, num_valid_per_speaker=10)
    assert Counter(u.speaker for u in valid) == {s: 10 for s in corpus.speakers}
    assert {u.utterance_id.split("_")[1] for u in valid} == {str(100153 + i) for i in range(10)}
    assert len(train) == 1520
