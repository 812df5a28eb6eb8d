"""Speech corpora: find the utterances and speakers of a folder tree, split train/validation.

Layouts recognised by :func:`discover_corpus` (the layout name is ``Corpus.layout``); files
and folders whose names start with a dot (``._p225_001.wav`` from macOS) are ignored:

``"vctk-0.80"``
    VCTK 0.80: ``root/wav48/p225/p225_001.wav``, transcripts ``root/txt/p225/p225_001.txt``.
``"vctk-0.92"``
    VCTK 0.92: ``root/wav48_silence_trimmed/p225/p225_001_mic1.flac`` (two microphones,
    ``mic1`` or ``mic2``), transcripts in ``root/txt/p225/p225_001.txt`` when present.
``"fsdd"``
    Free Spoken Digit Dataset: ``{digit}_{speaker}_{take}.wav`` in ``root`` or
    ``root/recordings``; the text is the digit's English word.
``"speaker-folders"``
    Any tree ``root/{speaker}/**/*.{wav,flac,ogg}`` (VCC 2016 is one).
``"files"``
    An explicit list of files (:func:`corpus_from_files`).

For both VCTK layouts ``root`` may be the corpus root or the ``wav48*`` folder itself.
Utterance ids are unique within a corpus: ``p225_001`` (VCTK, the mic suffix dropped),
``7_jackson_12`` (FSDD), ``{speaker}_{file stem}`` (speaker folders).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from vqaudio.audio import AUDIO_EXTENSIONS, find_audio_files, is_audio_name

#: Microphones of VCTK 0.92.
VCTK_MICS = ("mic1", "mic2")
#: English words of the FSDD digits, index = digit.
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
#: FSDD takes ``0 .. FSDD_TEST_TAKES - 1`` form the dataset's official test split.
FSDD_TEST_TAKES = 5

_FSDD_NAME = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z]+)_(?P<take>\d+)\.wav$", re.IGNORECASE)
_VCTK92_NAME = re.compile(r"^(?P<utt>.+)_(?P<mic>mic[12])\.flac$", re.IGNORECASE)


class CorpusError(ValueError):
    """A corpus that cannot be used: no audio, unknown layout, bad option; the message names the path."""


@dataclass(frozen=True)
class Utterance:
    """One recording.

    Attributes:
        path: the audio file.
        speaker: speaker name (``p225``, ``jackson``, ``SF1``), or ``None`` when unknown.
        utterance_id: id unique within the corpus (``p225_001``, ``7_jackson_12``).
        text: the transcript, or ``None`` when the corpus has none for this file.
    """

    path: Path
    speaker: str | None
    utterance_id: str
    text: str | None = None


@dataclass(frozen=True)
class Corpus:
    """The utterances of a corpus, sorted by ``(speaker, utterance_id)``.

    Attributes:
        layout: ``"vctk-0.80"``, ``"vctk-0.92"``, ``"fsdd"``, ``"speaker-folders"`` or ``"files"``.
        root: the folder it was discovered in (``None`` for an explicit list of files).
        utterances: the recordings.
    """

    layout: str
    root: Path | None
    utterances: tuple[Utterance, ...]

    @property
    def speakers(self) -> list[str]:
        """Sorted names of the speakers that have at least one utterance (``None`` left out)."""
        return sorted({u.speaker for u in self.utterances if u.speaker is not None})

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def with_utterances(self, utterances: Sequence[Utterance]) -> Corpus:
        """A corpus of the same layout and root holding ``utterances`` (sorted)."""
        return Corpus(self.layout, self.root, _sorted(utterances))


def speaker_table(corpus: Corpus) -> list[str]:
    """The speaker table: sorted speaker names; a speaker's id is its index in this list."""
    return corpus.speakers


def discover_corpus(
    root: str | os.PathLike | Sequence[str | os.PathLike], mic: str = "mic1"
) -> Corpus:
    """Find the utterances of a corpus, recognising its layout from the tree (see module doc).

    Args:
        root: the corpus folder; or one audio file, or a list of files and folders, which
            are expanded with :func:`vqaudio.audio.find_audio_files` and passed to
            :func:`corpus_from_files`.
        mic: VCTK 0.92 microphone, ``"mic1"`` (default) or ``"mic2"``; other layouts ignore it.
            Speakers with no file for that microphone are left out.

    Returns:
        the corpus, utterances sorted by ``(speaker, utterance_id)``.

    Raises:
        CorpusError: ``root`` does not exist, holds no audio, the layout cannot be
            recognised (e.g. a flat folder of files not named like FSDD), or ``mic`` is not
            ``mic1`` / ``mic2``.
    """
    if mic not in VCTK_MICS:
        raise CorpusError(f"mic must be one of {VCTK_MICS}, got {mic!r}")
    if not isinstance(root, (str, os.PathLike)):
        try:
            files = find_audio_files(list(root))
        except FileNotFoundError as exc:
            raise CorpusError(str(exc)) from None
        return corpus_from_files(files)
    root = Path(root)
    if not root.exists():
        raise CorpusError(f"{root}: no such file or directory")
    if root.is_file():
        return corpus_from_files([root])

    for name, layout in (("wav48_silence_trimmed", "vctk-0.92"), ("wav48", "vctk-0.80")):
        if (root / name).is_dir():
            return _discover_vctk(root / name, root / "txt", layout, mic, root)
        if root.name == name:
            return _discover_vctk(root, root.parent / "txt", layout, mic, root)

    for top in (root / "recordings", root):
        top_audio = _audio_in(top)
        if top_audio:
            break
    if top_audio:
        not_fsdd = [f for f in top_audio if not _FSDD_NAME.match(f.name)]
        if not_fsdd:
            raise CorpusError(
                f"{root}: cannot recognise the corpus layout: {len(top_audio)} audio files lie "
                f"directly in {top}, and {not_fsdd[0].name!r} is not named like FSDD "
                "({digit}_{speaker}_{take}.wav); put each speaker's files in a folder named "
                "after the speaker, or pass the files as a list"
            )
        return Corpus("fsdd", root, _sorted(_fsdd_utterance(f) for f in top_audio))

    speaker_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    by_speaker = {d.name: [f for f in find_audio_files(d) if not _hidden(f, d)] for d in speaker_dirs}
    by_speaker = {s: fs for s, fs in by_speaker.items() if fs}
    if not by_speaker:
        raise CorpusError(
            f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found, neither directly "
            "nor in speaker folders"
        )
    if all(_VCTK92_NAME.match(f.name) for fs in by_speaker.values() for f in fs):
        # A VCTK 0.92 wav folder under another name.
        return _discover_vctk(root, root.parent / "txt", "vctk-0.92", mic, root)
    utterances = []
    for speaker, files in by_speaker.items():
        d = root / speaker
        for f in files:
            rel = "_".join(f.relative_to(d).with_suffix("").parts)
            utt = rel if rel.startswith(speaker + "_") else f"{speaker}_{rel}"
            utterances.append(Utterance(f, speaker, utt))
    return Corpus("speaker-folders", root, _checked_unique(_sorted(utterances), root))


def corpus_from_files(files: Sequence[str | os.PathLike], speaker_from: str = "auto") -> Corpus:
    """A corpus of explicitly listed audio files (layout ``"files"``).

    Args:
        files: audio files (not folders); order does not matter.
        speaker_from: how to name each file's speaker:
            ``"auto"``: from an FSDD name (``7_jackson_12.wav`` -> ``jackson``, text
            ``"seven"``), else the parent folder when the file name starts with it and ``_``
            (``p225/p225_001.wav`` -> ``p225``), else ``None``;
            ``"parent"``: always the parent folder's name;
            ``"none"``: always ``None``.

    Utterance ids are file stems (FSDD, VCTK) or ``{parent}_{stem}`` with ``"parent"``;
    files whose ids collide get their full path (without suffix) as id.

    Raises:
        CorpusError: no files, a missing path or a folder in the list (a folder with an audio
            name is kept, to fail with its reason when read), or a bad ``speaker_from``.
    """
    if speaker_from not in ("auto", "parent", "none"):
        raise CorpusError(f"speaker_from must be 'auto', 'parent' or 'none', got {speaker_from!r}")
    if len(files) == 0:
        raise CorpusError("no audio files given")
    utterances = []
    for f in files:
        f = Path(f)
        if not os.path.lexists(f):
            raise CorpusError(f"{f}: not an audio file (missing)")
        if f.is_dir() and not is_audio_name(f):  # a folder named x.wav is listed, and fails when read
            raise CorpusError(f"{f}: not an audio file (a folder)")
        parent = f.parent.name
        if speaker_from == "none":
            utterances.append(Utterance(f, None, f.stem))
        elif speaker_from == "parent":
            utterances.append(Utterance(f, parent, f"{parent}_{f.stem}"))
        elif _FSDD_NAME.match(f.name):
            utterances.append(_fsdd_utterance(f))
        else:
            m = _VCTK92_NAME.match(f.name)
            stem = m.group("utt") if m else f.stem
            speaker = parent if parent and stem.startswith(parent + "_") else None
            utterances.append(Utterance(f, speaker, stem))
    counts: dict[str, int] = defaultdict(int)
    for u in utterances:
        counts[u.utterance_id] += 1
    utterances = [
        u if counts[u.utterance_id] == 1 else dataclasses.replace(u, utterance_id=str(u.path.with_suffix("")))
        for u in utterances
    ]
    return Corpus("files", None, _sorted(utterances))


def split_corpus(
    corpus: Corpus, num_valid_per_speaker: int = 5, method: str = "auto"
) -> tuple[Corpus, Corpus]:
    """Deterministic train/validation split that holds out utterances of every speaker.

    Methods:
        ``"official"`` (FSDD file names only): the dataset's test split, takes 0-4 of every
        digit and speaker, is held out (``num_valid_per_speaker`` is ignored).
        ``"parallel"``: for corpora whose speakers read the same sentences (VCC 2016): the
        sentence id of an utterance is its id without the ``{speaker}_`` prefix; the last
        ``num_valid_per_speaker`` sentence ids (sorted) shared by all speakers are held out
        for every speaker, so no validation sentence is seen in training.
        ``"per-speaker"``: the last ``num_valid_per_speaker`` utterance ids (sorted) of each
        speaker; a speaker with fewer utterances keeps at least one for training.
        ``"auto"``: ``"official"`` when every file has an FSDD name, else ``"parallel"``
        when at least two speakers share ``num_valid_per_speaker`` sentence ids, else
        ``"per-speaker"``.

    Utterances with speaker ``None`` are treated as one speaker. Nothing is random: the
    result depends only on the file names.

    Returns:
        ``(train, valid)`` corpora of the same layout and root.

    Raises:
        CorpusError: unknown method, ``"official"`` on a file not named like FSDD, ``"parallel"``
            with too few shared sentences, a negative count, or a speaker left with no
            training utterance.
    """
    if num_valid_per_speaker < 0:
        raise CorpusError(f"num_valid_per_speaker must be >= 0, got {num_valid_per_speaker}")
    if method not in ("auto", "official", "parallel", "per-speaker"):
        raise CorpusError(
            f"split method must be 'auto', 'official', 'parallel' or 'per-speaker', got {method!r}"
        )
    groups: dict[str | None, list[Utterance]] = defaultdict(list)
    for u in corpus.utterances:
        groups[u.speaker].append(u)
    shared = _shared_sentences(groups)
    if method == "auto":
        if corpus.layout == "fsdd" or (
            corpus.utterances and all(_FSDD_NAME.match(u.path.name) for u in corpus.utterances)
        ):
            method = "official"
        elif len(groups) >= 2 and len(shared) >= max(num_valid_per_speaker, 1):
            method = "parallel"
        else:
            method = "per-speaker"

    if method == "official":
        held = {u for u in corpus.utterances if _fsdd_take(u) < FSDD_TEST_TAKES}
    elif method == "parallel":
        if len(shared) < num_valid_per_speaker:
            raise CorpusError(
                f"{corpus.root}: a parallel split needs {num_valid_per_speaker} sentence ids shared "
                f"by all {len(groups)} speakers, found {len(shared)}"
            )
        held_ids = set(sorted(shared)[len(shared) - num_valid_per_speaker :])
        held = {u for u in corpus.utterances if _sentence_id(u) in held_ids}
    else:
        held = set()
        for utts in groups.values():
            n = min(num_valid_per_speaker, len(utts) - 1)
            if n > 0:
                held.update(sorted(utts, key=lambda u: u.utterance_id)[-n:])

    train = [u for u in corpus.utterances if u not in held]
    valid = [u for u in corpus.utterances if u in held]
    empty = sorted(str(s) for s in groups if not any(u.speaker == s for u in train))
    if empty:
        raise CorpusError(
            f"{corpus.root}: the {method!r} split leaves no training utterance for speaker(s) "
            f"{', '.join(empty[:10])}"
        )
    return corpus.with_utterances(train), corpus.with_utterances(valid)


def _discover_vctk(wav_dir: Path, txt_dir: Path, layout: str, mic: str, root: Path) -> Corpus:
    """Utterances of a VCTK ``wav48`` / ``wav48_silence_trimmed`` folder (see module doc)."""
    utterances = []
    for d in sorted(p for p in wav_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        speaker = d.name
        for f in sorted(p for p in d.iterdir() if not p.name.startswith(".")):
            if layout == "vctk-0.92":
                m = _VCTK92_NAME.match(f.name)
                if m is None or m.group("mic").lower() != mic:
                    continue
                utt = m.group("utt")
            else:
                if f.suffix.lower() not in AUDIO_EXTENSIONS:
                    continue
                utt = f.stem
            txt = txt_dir / speaker / f"{utt}.txt"
            text = txt.read_text(encoding="utf-8", errors="replace").strip() if txt.is_file() else None
            utterances.append(Utterance(f, speaker, utt, text))
    if not utterances:
        what = f"{mic} FLAC files (*_{mic}.flac)" if layout == "vctk-0.92" else "audio files"
        raise CorpusError(f"{wav_dir}: a {layout} folder with no {what} in its speaker folders")
    return Corpus(layout, root, _checked_unique(_sorted(utterances), root))


def _audio_in(folder: Path) -> list[Path]:
    """Audio files directly in ``folder`` (not in subfolders), sorted; [] if it is no folder."""
    if not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if is_audio_name(f))


def _hidden(path: Path, under: Path) -> bool:
    """Whether a part of ``path`` below ``under`` starts with a dot (``._x.wav``, ``.cache/``)."""
    return any(part.startswith(".") for part in path.relative_to(under).parts)


def _fsdd_utterance(path: Path) -> Utterance:
    m = _FSDD_NAME.match(path.name)
    assert m is not None
    return Utterance(path, m.group("speaker"), path.stem, DIGIT_WORDS[int(m.group("digit"))])


def _fsdd_take(u: Utterance) -> int:
    m = _FSDD_NAME.match(u.path.name)
    if m is None:
        raise CorpusError(f"{u.path}: not an FSDD file name ({{digit}}_{{speaker}}_{{take}}.wav)")
    return int(m.group("take"))


def _sentence_id(u: Utterance) -> str:
    """The id without its ``{speaker}_`` prefix: ``p225_001`` -> ``001``, ``SF1_100001`` -> ``100001``."""
    if u.speaker is not None and u.utterance_id.startswith(u.speaker + "_"):
        return u.utterance_id[len(u.speaker) + 1 :]
    return u.utterance_id


def _shared_sentences(groups: dict[str | None, list[Utterance]]) -> set[str]:
    sets = [{_sentence_id(u) for u in utts} for utts in groups.values()]
    return set.intersection(*sets) if sets else set()


def _sorted(utterances) -> tuple[Utterance, ...]:
    return tuple(sorted(utterances, key=lambda u: (u.speaker or "", u.utterance_id, str(u.path))))


def _checked_unique(utterances: tuple[Utterance, ...], root: Path) -> tuple[Utterance, ...]:
    seen: dict[str, Path] = {}
    for u in utterances:
        if u.utterance_id in seen:
            raise CorpusError(
                f"{root}: two files give the utterance id {u.utterance_id!r}: "
                f"{seen[u.utterance_id]} and {u.path}"
            )
        seen[u.utterance_id] = u.path
    return utterances
