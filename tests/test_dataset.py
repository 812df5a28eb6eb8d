"""SegmentDataset: shapes, speaker ids, padding, crops, seeding, resampling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader

from vqaudio.audio import AudioError, load_audio
from vqaudio.data import SegmentDataset, Utterance, discover_corpus, iter_audio, speaker_table

SR = 16000


@pytest.fixture(scope="module")
def fsdd_small(fsdd_sample_dir):
    """12 bundled FSDD training clips (2 per speaker) and the 6-speaker table."""
    corpus = discover_corpus(fsdd_sample_dir)
    utts = [u for u in corpus if u.utterance_id.endswith(("_5", "_6")) and u.utterance_id[0] in "38"]
    return utts, speaker_table(corpus)


def _segment_sequence(ds, n):
    return torch.stack([ds[i % len(ds)]["wav"] for i in range(n)])


def test_items_shapes_and_speakers(fsdd_small):
    utts, speakers = fsdd_small
    ds = SegmentDataset(utts, speakers, sample_rate=SR, segment_length=2048, progress=False)
    assert len(ds) == len(utts) == 24
    for i, u in enumerate(utts):
        item = ds[i]
        assert item["wav"].shape == (1, 2048) and item["wav"].dtype == torch.float32
        assert item["speaker"].dtype == torch.int64 and item["speaker"].shape == ()
        assert speakers[int(item["speaker"])] == u.speaker
        assert item["wav"].abs().max() <= 1.0 and item["wav"].abs().max() > 1e-4  # speech, not padding
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["wav"].shape == (4, 1, 2048) and batch["speaker"].shape == (4,)


@pytest.mark.parametrize("preload", [True, False])
def test_short_clip_padded_at_end_and_long_clip_cropped(fsdd_small, preload):
    utts, speakers = fsdd_small
    u = utts[0]
    full = load_audio(u.path, SR)
    long_seg = (len(full) // 64 + 4) * 64
    for random_offsets in (True, False):
        ds = SegmentDataset([u], speakers, sample_rate=SR, segment_length=long_seg,
                            random_offsets=random_offsets, preload=preload, progress=False)
        wav = ds[0]["wav"][0].numpy()
        np.testing.assert_allclose(wav[: len(full)], full, atol=1.0 / 32768)
        assert not wav[len(full):].any() and len(wav) - len(full) > 3 * 64
    # Validation: the centred segment, identical on every call.
    ds = SegmentDataset([u], speakers, sample_rate=SR, segment_length=1024, random_offsets=False,
                        preload=preload, progress=False)
    start = (len(full) - 1024) // 2
    np.testing.assert_allclose(ds[0]["wav"][0].numpy(), full[start : start + 1024], atol=1.0 / 32768)
    assert torch.equal(ds[0]["wav"], ds[0]["wav"])
    # Training: random crops are contiguous pieces of the clip.
    ds = SegmentDataset([u], speakers, sample_rate=SR, segment_length=1024, preload=preload,
                        progress=False)
    starts = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        seg = ds[0]["wav"][0].numpy()
        err = [np.abs(full[s : s + 1024] - seg).max() for s in range(len(full) - 1023)]
        assert min(err) <= 1.0 / 32768
        starts.add(int(np.argmin(err)))
    assert len(starts) > 1


def test_seeded_offsets_reproducible(fsdd_small):
    utts, speakers = fsdd_small
    def make(seed):
        return SegmentDataset(utts, speakers, sample_rate=SR, segment_length=1024, seed=seed,
                              progress=False)

    a, b, c = make(0), make(0), make(1)
    first = _segment_sequence(a, 48)
    assert torch.equal(first, _segment_sequence(b, 48))
    assert not torch.equal(first, _segment_sequence(c, 48))
    # Offsets depend on (seed, epoch, index) only: the same epoch repeats, the next differs.
    assert torch.equal(first, _segment_sequence(a, 48))
    a.set_epoch(1)
    assert not torch.equal(first, _segment_sequence(a, 48))


def test_worker_offsets_equal_main_process_offsets(fsdd_small):
    """Workers draw the crops the main process would: a resumed run, with any number of
    workers, sees the crops of an uninterrupted one."""
    utts, speakers = fsdd_small
    ds = SegmentDataset(utts, speakers, sample_rate=SR, segment_length=1024, progress=False)

    def epoch(n, workers):
        ds.set_epoch(n)
        loader = DataLoader(ds, batch_size=len(ds), num_workers=workers, multiprocessing_context="fork" if workers else None)
        return next(iter(loader))["wav"]

    e0, e1 = epoch(0, 2), epoch(1, 2)
    assert not torch.equal(e0, e1)
    assert torch.equal(e0, epoch(0, 0)) and torch.equal(e1, epoch(1, 0))


def test_resamples_and_downmixes_44k_stereo(fsdd_sample_dir, tmp_path):
    src = fsdd_sample_dir / "recordings" / "5_george_6.wav"
    wav8k, sr = sf.read(str(src), dtype="float32")
    left = soxr.resample(wav8k, sr, 44100).astype(np.float32)
    stereo = np.stack([left, 0.5 * left], axis=1)  # mono mix = 0.75 * left
    path = tmp_path / "p1" / "stereo_44k.flac"
    path.parent.mkdir()
    sf.write(str(path), stereo, 44100, subtype="PCM_16")
    expected = 0.75 * soxr.resample(wav8k, sr, SR)
    seg = (len(expected) // 64 + 1) * 64
    ds = SegmentDataset([Utterance(path, "p1", "stereo_44k")], ["p1"], sample_rate=SR,
                        segment_length=seg, random_offsets=False, progress=False)
    got = ds[0]["wav"][0].numpy()
    assert not got[len(expected) + 2 :].any()  # zero padding after the resampled clip
    n = min(len(expected), len(got))
    corr = np.corrcoef(got[:n], expected[:n])[0, 1]
    assert corr > 0.99
    assert np.std(got[:n]) / np.std(expected[:n]) == pytest.approx(1.0, abs=0.02)


def test_errors(fsdd_small, tmp_path):
    utts, speakers = fsdd_small
    with pytest.raises(ValueError, match="multiple of hop_length"):
        SegmentDataset(utts, speakers, sample_rate=SR, segment_length=1000, progress=False)
    with pytest.raises(ValueError, match="not in the speaker table"):
        SegmentDataset(utts, ["george"], sample_rate=SR, segment_length=1024, preload=False)
    with pytest.raises(ValueError, match="at least one"):
        SegmentDataset([], speakers, sample_rate=SR, segment_length=1024)
    bad = tmp_path / "george" / "broken.wav"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF not really a wav file")
    broken = [*utts[:2], Utterance(bad, "george", "george_broken")]
    with pytest.raises(AudioError, match="broken.wav"):
        SegmentDataset(broken, speakers, sample_rate=SR, segment_length=1024, progress=False)
    ds = SegmentDataset(broken, None, sample_rate=SR, segment_length=1024, preload=False)
    assert int(ds[0]["speaker"]) == 0
    with pytest.raises(AudioError, match="broken.wav"):
        ds[2]


def test_iter_audio_threads_keep_order(fsdd_small):
    utts, _ = fsdd_small
    serial = list(iter_audio(utts, 8000))
    threaded = list(iter_audio(utts, 8000, num_threads=2))
    assert [u for u, _ in threaded] == utts
    for (_, a), (_, b) in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)
    assert serial[0][1].dtype == np.float32 and serial[0][1].ndim == 1
