"""Audio I/O: real clips load correctly, bad inputs give errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from vqaudio.audio import AudioError, find_audio_files, load_audio, read_audio, save_audio


@pytest.fixture
def clip(fsdd_sample_dir):
    return sorted((fsdd_sample_dir / "recordings").glob("*.wav"))[0]


def test_reads_real_clip_at_its_rate(clip):
    wav, sr = read_audio(clip)
    assert sr == 8000 and wav.dtype == np.float32 and wav.ndim == 1
    assert 0 < np.abs(wav).max() <= 1


def test_resamples_44k_stereo_to_model_rate(tmp_path, clip):
    wav, sr = read_audio(clip)
    import soxr

    hi = soxr.resample(wav, sr, 44100)
    stereo = np.stack([hi, 0.5 * hi], axis=1)
    path = tmp_path / "stereo44k.flac"
    sf.write(path, stereo, 44100)
    out = load_audio(path, 16000)
    assert out.ndim == 1 and out.dtype == np.float32
    assert abs(len(out) - round(len(wav) * 2)) <= 2
    # downmix is the channel mean: 0.75 x the original, after 8k -> 44.1k -> 16k
    ref = soxr.resample(wav, 8000, 16000)
    n = min(len(ref), len(out))
    assert np.corrcoef(out[:n], ref[:n])[0, 1] > 0.99
    assert np.std(out[:n]) == pytest.approx(0.75 * np.std(ref[:n]), rel=0.05)


def test_silent_file_loads_as_zeros(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(800, dtype=np.float32), 8000)
    assert not load_audio(path, 8000).any()


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b"RIFF\x00\x00not really a wave file"), "cannot decode audio"),
        (lambda p: p.write_text("hello"), "cannot decode audio"),
        (lambda p: sf.write(p, np.zeros(0, dtype=np.float32), 8000), "no audio samples"),
        (lambda p: sf.write(p, np.array([0.1, np.nan, 0.2], dtype=np.float32), 8000, subtype="FLOAT"), "NaN or Inf"),
    ],
    ids=["missing", "corrupt", "text", "empty", "nan"],
)
def test_bad_files_raise_audio_error_naming_the_file(tmp_path, make, problem):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(AudioError, match=problem) as info:
        load_audio(path, 8000)
    assert str(path) in str(info.value)


def test_directory_is_not_audio(tmp_path):
    with pytest.raises(AudioError, match="is a directory"):
        load_audio(tmp_path)


def test_save_audio_is_16bit_clipped_and_leaves_no_temp_files(tmp_path):
    path = save_audio(tmp_path / "out" / "x.wav", np.array([0.0, 0.5, 2.0, -3.0], dtype=np.float32), 8000)
    info = sf.info(path)
    assert info.subtype == "PCM_16" and info.samplerate == 8000
    data, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(data, [0.0, 0.5, 1.0, -1.0], atol=1e-4)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]


def test_find_audio_files(tmp_path, clip):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.wav", "a/b/2.FLAC", "a/notes.txt"):
        (tmp_path / name).write_bytes(clip.read_bytes())
    found = find_audio_files(tmp_path / "a")
    assert [p.name for p in found] == ["1.wav", "2.FLAC"]
    with pytest.raises(FileNotFoundError, match="nope"):
        find_audio_files(tmp_path / "nope")


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_error(tmp_path):
    from vqaudio._files import atomic_path, atomic_write_json

    target = tmp_path / "sub" / "x.json"
    atomic_write_json(target, {"a": 1})  # creates the folder
    assert target.read_text() == '{\n  "a": 1\n}\n'
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == '{\n  "a": 1\n}\n'  # untouched
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"]  # no temporary left
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert target.read_text() == '{\n  "a": 1\n}\n'
