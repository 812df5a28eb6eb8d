"""Pretrained judges that nobody here wrote: who is speaking, and what is said.

- :class:`SpeakerJudge`: speaker embeddings from ``resemblyzer``'s GE2E encoder (Wan et al.
  2018; the weights ship inside the package), batched over clips.
- :class:`SpeakerCentroids`: per-speaker centroids of reference embeddings; cosine similarity
  to a centroid and speaker identification by the nearest centroid, leaving the judged
  utterance's own reference out of its speaker's centroid.
- :class:`Recognizer`: ``pocketsphinx`` with its bundled US-English 16 kHz acoustic model,
  either constrained by a JSGF grammar of single words (FSDD digits) or with the bundled
  trigram language model (free speech); :func:`word_error_rate` scores its output.

All inputs are ``wav: [T] float32 in [-1, 1] at sample_rate Hz``; both judges work at 16 kHz
and resample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from vqaudio.audio import resample
from vqaudio.evaluate.optional import require

#: Rate of both judges' models, Hz.
JUDGE_RATE = 16000


# ----- speaker -------------------------------------------------------------------------------


class SpeakerJudge:
    """GE2E speaker embeddings (``resemblyzer.VoiceEncoder``, 256-d, L2-normalised).

    Each clip goes through resemblyzer's own preprocessing (resampling to 16 kHz, volume
    normalisation to -30 dBFS, trimming of long silences with webrtcvad) and its
    ``embed_utterance`` recipe (1.6 s partial windows at 1.3 per second, mean of the partial
    embeddings, L2-normalised), but the partial windows of all clips go through the LSTM in
    batches, which is many times faster than one clip at a time and gives the same result.
    A clip that is silent (or becomes empty after trimming) gets a NaN embedding.

    Args:
        device: torch device for the encoder.
        batch_size: partial windows per forward pass.
        num_threads: torch threads while embedding (restored after); 1 by default, which is
            fastest for this small LSTM on a shared CPU (several times faster than 2 threads
            when other processes compete for the cores); None leaves torch's setting.

    Raises:
        MissingExtraError: ``resemblyzer`` (or its ``webrtcvad``) is missing (on first use).
    """

    EMBEDDING_SIZE = 256

    def __init__(self, device: str = "cpu", batch_size: int = 64, num_threads: int | None = 1):
        self.device = device
        self.batch_size = batch_size
        self.num_threads = num_threads
        self._encoder = None

    def _load(self):
        if self._encoder is None:
            require("webrtcvad")
            resemblyzer = require("resemblyzer")
            self._encoder = resemblyzer.VoiceEncoder(self.device, verbose=False)
        return self._encoder

    def embed(self, wavs: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
        """Embeddings of clips.

        Args:
            wavs: N clips, each [T_i] float32 in [-1, 1] at ``sample_rate`` Hz.

        Returns:
            [N, 256] float32, rows L2-normalised; NaN rows for silent or empty clips.
        """
        import torch

        encoder = self._load()
        from resemblyzer import audio as ra
        from resemblyzer import preprocess_wav

        out = np.full((len(wavs), self.EMBEDDING_SIZE), np.nan, np.float32)
        partials: list[np.ndarray] = []
        owner: list[int] = []
        for i, wav in enumerate(wavs):
            w = resample(np.asarray(wav, np.float32), sample_rate, JUDGE_RATE)
            if len(w) == 0 or np.sqrt(np.mean(w.astype(np.float64) ** 2)) < 1e-5:
                continue  # silent: normalize_volume would divide by zero
            w = preprocess_wav(w)  # no source_sr: already at 16 kHz
            if len(w) < JUDGE_RATE // 100:
                continue
            wav_slices, mel_slices = encoder.compute_partial_slices(len(w), rate=1.3, min_coverage=0.75)
            if wav_slices[-1].stop >= len(w):
                w = np.pad(w, (0, wav_slices[-1].stop - len(w)))
            mel = ra.wav_to_mel_spectrogram(w)
            for s in mel_slices:
                partials.append(mel[s])
                owner.append(i)
        if not partials:
            return out
        embeds = []
        old_threads = torch.get_num_threads()
        if self.num_threads is not None:
            torch.set_num_threads(self.num_threads)
        try:
            with torch.inference_mode():
                for k in range(0, len(partials), self.batch_size):
                    batch = torch.from_numpy(np.stack(partials[k : k + self.batch_size])).to(self.device)
                    embeds.append(encoder(batch).cpu().numpy())
        finally:
            torch.set_num_threads(old_threads)
        partial_embeds = np.concatenate(embeds)
        owner_arr = np.asarray(owner)
        for i in np.unique(owner_arr):
            raw = partial_embeds[owner_arr == i].mean(axis=0)
            out[i] = raw / np.linalg.norm(raw)
        return out


class SpeakerCentroids:
    """Speaker centroids of reference embeddings, with leave-one-out for the judged utterance.

    The centroid of a speaker is the L2-normalised mean of its reference embeddings. When an
    output derived from reference utterance ``i`` is judged (its reconstruction, or its
    conversion to another speaker), ``i``'s own embedding is left out of its speaker's
    centroid (``exclude=i``), so a system is not rewarded for copying the utterance's content
    and the original audio itself is judged the same way (leave-one-out).

    Args:
        embeddings: [N, E] float32 reference embeddings (NaN rows are ignored).
        speakers: N speaker names.

    Raises:
        ValueError: lengths differ, or no speaker has a usable embedding.
    """

    def __init__(self, embeddings: np.ndarray, speakers: Sequence[str]):
        if len(embeddings) != len(speakers):
            raise ValueError(f"{len(embeddings)} embeddings for {len(speakers)} speaker labels")
        self.names = sorted(set(speakers))
        self._index = {s: k for k, s in enumerate(self.names)}
        self.labels = np.array([self._index[s] for s in speakers])
        self.embeddings = np.asarray(embeddings, np.float64)
        self.valid = ~np.isnan(self.embeddings).any(axis=1)
        e = np.where(self.valid[:, None], self.embeddings, 0.0)
        self.sums = np.stack([e[self.labels == k].sum(axis=0) for k in range(len(self.names))])
        self.counts = np.array([int(self.valid[self.labels == k].sum()) for k in range(len(self.names))])
        if not self.counts.any():
            raise ValueError("no usable reference embedding (all clips silent?)")

    def centroids(self, exclude: int | None = None) -> np.ndarray:
        """[S, E] float64 L2-normalised centroids in the order of :attr:`names`; a speaker with
        no reference left gets a NaN row. ``exclude``: a reference index to leave out."""
        sums, counts = self.sums.copy(), self.counts.astype(np.float64)
        if exclude is not None and self.valid[exclude]:
            sums[self.labels[exclude]] -= self.embeddings[exclude]
            counts[self.labels[exclude]] -= 1
        with np.errstate(invalid="ignore", divide="ignore"):
            c = sums / counts[:, None]
            c = c / np.linalg.norm(c, axis=1, keepdims=True)
        c[counts == 0] = np.nan
        return c

    def has_centroid(self, speaker: str, exclude: int | None = None) -> bool:
        """Whether ``speaker`` has a reference embedding left once ``exclude`` is left out."""
        k = self._index.get(speaker)
        if k is None:
            return False
        n = self.counts[k] - (1 if exclude is not None and self.valid[exclude] and self.labels[exclude] == k else 0)
        return bool(n > 0)

    def similarity(self, embedding: np.ndarray, speaker: str, exclude: int | None = None) -> float:
        """Cosine similarity of ``embedding`` [E] to ``speaker``'s centroid; NaN if either is missing."""
        c = self.centroids(exclude)[self._index[speaker]]
        return float(np.dot(c, embedding))

    def identify(self, embedding: np.ndarray, exclude: int | None = None) -> str | None:
        """Name of the nearest centroid by cosine similarity; None for a NaN embedding."""
        if np.isnan(embedding).any():
            return None
        sims = self.centroids(exclude) @ embedding
        sims = np.where(np.isnan(sims), -np.inf, sims)
        return self.names[int(np.argmax(sims))]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (NaN if either has NaN or zero norm)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if not (na > 0 and nb > 0):
        return math.nan
    return float(np.dot(a, b) / (na * nb))


# ----- speech recognition --------------------------------------------------------------------


class Recognizer:
    """pocketsphinx 5 with its bundled en-US acoustic model and CMU dictionary.

    With ``words`` the search is a JSGF grammar that accepts exactly one of them (e.g. the ten
    digit words: every clip is recognised as one digit); without, the bundled trigram language
    model decodes free speech. Each clip is resampled to 16 kHz, padded with 0.2 s of silence
    on both sides and given a little Gaussian dither (standard deviation 1e-4, a fixed seed per
    clip): FSDD clips are trimmed tightly, and the recogniser's noise and cepstral-mean
    estimates need some silence around the word. With those settings the digit grammar
    recognises 0.77 of the original FSDD test split (takes 0-4). The feature extraction
    (cepstral mean and noise estimates) is reset before every clip, so a clip's words do not
    depend on the clips recognised before it (they did: a VCC 2016 sentence read "... house
    down our ..." first and "... house on our ..." after another clip).

    Args:
        words: the grammar's words (lower case, in the CMU dictionary), or None for a language
            model.
        lm: an ARPA or binary language model file instead of the bundled one (``words=None``).

    Raises:
        MissingExtraError: ``pocketsphinx`` is not installed (on first use).
        ValueError: a word is not in the dictionary.
    """

    PAD_SECONDS = 0.2
    DITHER = 1e-4

    def __init__(self, words: Sequence[str] | None = None, lm: str | None = None):
        self.words = tuple(words) if words is not None else None
        self.lm = lm
        self._decoder = None

    def _load(self):
        if self._decoder is None:
            ps = require("pocketsphinx")
            if self.words is None:
                decoder = ps.Decoder(loglevel="FATAL") if self.lm is None else ps.Decoder(lm=self.lm, loglevel="FATAL")
            else:
                decoder = ps.Decoder(lm=None, loglevel="FATAL")
                for w in self.words:
                    if not decoder.lookup_word(w):
                        raise ValueError(f"word {w!r} is not in pocketsphinx's dictionary")
                grammar = "#JSGF V1.0;\ngrammar words;\npublic <word> = " + " | ".join(self.words) + " ;\n"
                decoder.add_jsgf_string("words", grammar)
                decoder.activate_search("words")
            self._decoder = decoder
        return self._decoder

    def __call__(self, wav: np.ndarray, sample_rate: int) -> str:
        """Recognise one clip: [T] float32 at ``sample_rate`` Hz -> lower-case words ('' if none)."""
        decoder = self._load()
        decoder.reinit_feat()  # no cepstral-mean or noise state carried over from the previous clip
        w = resample(np.asarray(wav, np.float32), sample_rate, JUDGE_RATE).astype(np.float64)
        pad = np.zeros(int(self.PAD_SECONDS * JUDGE_RATE))
        w = np.concatenate([pad, w, pad])
        w += self.DITHER * np.random.default_rng(0).standard_normal(len(w))
        pcm = np.round(np.clip(w, -1.0, 1.0) * 32767.0).astype(np.int16).tobytes()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        return " ".join(_strip_alternates(t) for t in text.lower().split())

    def recognize(self, wavs: Sequence[np.ndarray], sample_rate: int) -> list[str]:
        """Recognise N clips; returns N strings."""
        return [self(w, sample_rate) for w in wavs]


#: Common English words that compete with the digits in :class:`DigitDetector` (homophones
#: of digits such as "to", "for", "won", "ate" left out).
COMPETING_WORDS = tuple("""
the of and a in is it you that he was on are as with his they i at be this have from or had by
hot but some what there we can out other were all your when up use word how said an each she
which do their time if will way about many then them would write like so these her long make
thing see him has look more day could go come did my sound no most number who over know water
than call first people may down side been now find any new work part take get place made live
where after back little only round man year came show every good me give our under name very
through just form much great think say help low before turn cause same mean differ move right
boy old tell does set want air well also play small end put home read hand port large spell add
even land here must big high such follow act why ask men change went light kind off need house
picture try us again animal point mother world near build self earth father head stand own page
should country found answer school grow study still learn plant cover food sun between state
keep eye never last let thought city cross farm hard start might story saw far sea draw left
late run don't while press close night real life few north
""".split())


class DigitDetector:
    """Is a clip heard as one spoken digit at all? (For generated samples, which have no text.)

    The digit grammar of :class:`Recognizer` always answers with some digit, even for noise, so
    it cannot tell whether a sample sounds like a digit. Here pocketsphinx decodes with a
    unigram language model (built with ``pocketsphinx.lm.ArpaBoLM``) over the ten digit words
    and 240 common English words (:data:`COMPETING_WORDS`), the digits together holding half of
    the probability mass; a clip counts as a digit when the hypothesis is exactly one digit
    word. The test is strict: on the original FSDD test split it accepts about half the clips
    (0.47 on 30 clips), on time-reversed digits 0.13 and on white noise 0, so read a
    sample's rate against the rate of the original clips in the same report.

    Raises:
        MissingExtraError: ``pocketsphinx`` is not installed (on first use).
    """

    def __init__(self, digits: Sequence[str]):
        self.digits = tuple(digits)
        self._recognizer: Recognizer | None = None
        self._tmp = None

    def _load(self) -> Recognizer:
        if self._recognizer is None:
            import tempfile
            from pathlib import Path

            require("pocketsphinx")
            from pocketsphinx.lm import ArpaBoLM

            others = [w for w in COMPETING_WORDS if w not in self.digits]
            repeat = max(1, round(len(others) / len(self.digits)))  # digits: half the mass
            text = "\n".join(list(self.digits) * repeat + others) + "\n"
            lm = ArpaBoLM(text=text, add_start=True)
            lm.compute()
            self._tmp = tempfile.TemporaryDirectory(prefix="vqaudio-lm-")
            path = Path(self._tmp.name) / "digits.arpa"
            lm.write_file(str(path))
            self._recognizer = Recognizer(None, lm=str(path))
        return self._recognizer

    def __call__(self, wav: np.ndarray, sample_rate: int) -> bool:
        """Whether ``wav`` [T] float32 at ``sample_rate`` Hz is recognised as exactly one digit word."""
        words = self._load()(wav, sample_rate).split()
        return len(words) == 1 and words[0] in self.digits


def _strip_alternates(word: str) -> str:
    """CMU dictionary alternates: ``read(2)`` -> ``read``."""
    return word.split("(", 1)[0]


def normalize_text(text: str) -> list[str]:
    """Lower-case words with punctuation removed (``"Please call Stella."`` -> ``["please", "call", "stella"]``)."""
    import re

    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two word sequences (substitutions, insertions, deletions)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus word error rate: total word edits / total reference words (texts normalised by
    :func:`normalize_text`). NaN when the references hold no word.

    Raises:
        ValueError: different numbers of references and hypotheses.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    edits = words = 0
    for r, h in zip(references, hypotheses):
        rw = normalize_text(r)
        edits += edit_distance(rw, normalize_text(h))
        words += len(rw)
    return edits / words if words else math.nan
