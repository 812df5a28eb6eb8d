"""The tokenize pipeline (vqaudio.tokenize) on real FSDD clips with a tiny random VQ-VAE."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import vqaudio.detokenize as dt
import vqaudio.shards as shards
import vqaudio.streaming as streaming
import vqaudio.tokenize as tk
import vqaudio.tokenize_cli as tk_cli
from conftest import tiny_vqvae
from vqaudio.audio import load_audio
from vqaudio.model import VQVAE
from vqaudio.nn.encoder import PaddedEncoder
from vqaudio.tokens import read_tokens

FSDD_SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
REPO = Path(__file__).resolve().parents[1]
FINAL_FILES = ("metadata.json", "manifest.tsv", "failures.tsv")


def _fsdd_recordings() -> Path:
    for d in (REPO / "samples" / "fsdd" / "recordings", REPO.parent / "shared" / "data" / "fsdd" / "recordings"):
        if d.is_dir() and any(d.glob("*.wav")):
            return d
    pytest.skip("no FSDD recordings (samples/fsdd or ../shared/data/fsdd)")


def _tiny_model(sample_rate: int = 8000, seed: int = 0, bias: float | None = None, causal: bool = False) -> VQVAE:
    model = tiny_vqvae(FSDD_SPEAKERS, seed, sample_rate=sample_rate, encoder_channels=(8, 8, 16, 16, 16, 16),
                       codebook_size=32, gate_channels=8, causal_encoder=causal).train()
    # Variance-preserving weights and a codebook spread over the latents' range, so that
    # latents are well separated from each other (not all within float rounding of one
    # code, as with PyTorch's default init) and many codes are used.
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.Conv1d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if bias is not None:
                    m.bias.fill_(bias)
        z = model.encoder(torch.randn(4, 1, 64 * 64) * 0.3).transpose(1, 2).reshape(-1, 8)
        model.quantizer.codebook.copy_(z.mean(0) + z.std(0) * torch.randn(32, 8))
    return model.eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    _tiny_model().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Eight real FSDD clips of two speakers in FSDD layout."""
    src = _fsdd_recordings()
    root = tmp_path_factory.mktemp("fsdd")
    for speaker in ("jackson", "theo"):
        for digit in range(4):
            shutil.copy(src / f"{digit}_{speaker}_1.wav", root / f"{digit}_{speaker}_1.wav")
    return root


def _reference_codes(model: VQVAE, path: Path) -> np.ndarray:
    wav = torch.from_numpy(load_audio(path, model.sample_rate))[None, None]
    return model.encode(wav)[0].numpy()


def _final_bytes(out: Path) -> dict[str, bytes]:
    meta = read_tokens(out).metadata
    return {name: (out / name).read_bytes() for name in meta["files"] + [FINAL_FILES[0]]}


@pytest.mark.parametrize("fmt", ["bin", "jsonl", "parquet"])
def test_formats_hold_the_codes_of_encode(tmp_path, ckpt, corpus, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow", reason="the parquet format needs pyarrow (pip install vqaudio[tokens])")
    summary = tk.tokenize(corpus, ckpt, tmp_path / "tok", format=fmt, progress=False, batch_size=3)
    assert summary.num_tokenized == 8 and summary.num_failed == 0
    model = VQVAE.from_pretrained(ckpt)
    ts = read_tokens(tmp_path / "tok")
    meta = ts.metadata
    assert meta["checkpoint_id"] == model.checkpoint_id and meta["hop_length"] == 64
    assert meta["sample_rate"] == 8000 and meta["codebook_size"] == 32 and meta["codes_per_second"] == 125.0
    assert meta["speakers"] == FSDD_SPEAKERS and meta["format"] == fmt
    assert [e.path for e in ts] == sorted(p.name for p in corpus.glob("*.wav"))
    used = set()
    for e in ts:
        ref = _reference_codes(model, corpus / e.path)
        np.testing.assert_array_equal(e.codes, ref)
        assert e.speaker == e.path.split("_")[1]
        assert e.duration == pytest.approx(sf.info(str(corpus / e.path)).frames / 8000)
        used.update(e.codes.tolist())
    assert len(used) > 4  # the test means something: the codes vary
    manifest = (tmp_path / "tok" / "manifest.tsv").read_text().splitlines()[1:]
    assert [line.split("\t")[2] for line in manifest] == [str(e.codes.size) for e in ts]


def test_offset_and_dedup_round_trip(tmp_path, ckpt, corpus):
    tk.tokenize(corpus, ckpt, tmp_path / "plain", progress=False)
    tk.tokenize(corpus, ckpt, tmp_path / "lm", offset=1000, dedup=True, progress=False)
    plain, lm = read_tokens(tmp_path / "plain"), read_tokens(tmp_path / "lm")
    for a, b in zip(plain, lm):
        np.testing.assert_array_equal(a.codes, b.codes)
    raw = np.memmap(tmp_path / "lm" / "tokens.bin", dtype=np.uint16, mode="r")
    assert raw.min() >= 1000 and raw.max() < 1032
    assert lm.metadata["num_tokens"] < lm.metadata["num_codes"] == plain.metadata["num_codes"]
    runs = np.fromfile(tmp_path / "lm" / "run_lengths.bin", dtype="<u4")
    assert runs.size == raw.size and int(runs.sum()) == plain.metadata["num_codes"]


def test_pieces_cover_the_stream_exactly():
    rng = np.random.default_rng(0)
    signal = rng.standard_normal(10_000).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, 10_000), 30, replace=False))
    blocks = np.split(signal, cuts)
    pieces = list(streaming.iter_pieces(iter(blocks), 64, 640, 192))
    end = (10_000 // 64) * 64
    assert [p.index for p in pieces] == list(range(len(pieces))) and pieces[-1].last
    assert not any(p.last for p in pieces[:-1])
    kept = []
    for p in pieces:
        np.testing.assert_array_equal(p.wav, signal[p.start : p.start + p.wav.size])
        assert p.wav.size % 64 == 0 and p.start + p.wav.size <= end
        a, b = p.keep
        kept.append((p.start + 64 * a, p.start + 64 * b))
        assert 64 * a >= min(192, p.start + 64 * a) and p.wav.size - 64 * b >= min(192, end - p.start - 64 * b)
    assert kept[0][0] == 0 and kept[-1][1] == end
    assert all(x[1] == y[0] for x, y in zip(kept, kept[1:]))
    with pytest.raises(ValueError, match="fewer than one hop"):
        list(streaming.iter_pieces(iter([signal[:63]]), 64, 640, 192))


def test_padded_batch_encodes_like_single_clips(corpus):
    model = _tiny_model(bias=0.2)  # biases make the padding's activations far from zero
    wavs = [load_audio(p, 8000) for p in sorted(corpus.glob("*.wav"))[:4]]
    lengths = [(w.size // 64) * 64 for w in wavs]
    batch = torch.zeros(4, 1, max(lengths))
    for b, (w, n) in enumerate(zip(wavs, lengths)):
        batch[b, 0, :n] = torch.from_numpy(w[:n])
    codes = streaming.encode_padded(model, batch, lengths)
    for b, (w, n) in enumerate(zip(wavs, lengths)):
        ref = model.encode(torch.from_numpy(w)[None, None])[0]
        torch.testing.assert_close(codes[b, : n // 64], ref, rtol=0, atol=0)
    # Without keeping the padding out of every layer, the last codes of short clips differ.
    with torch.no_grad():
        naive = model.quantizer.encode(model.encoder(batch))
    assert any(not torch.equal(naive[b, : n // 64], codes[b, : n // 64]) for b, n in enumerate(lengths))
    # Several clips packed into one row, one hop apart, also encode as if alone.
    row = torch.zeros(1, 1, sum(lengths) + 64 * len(lengths))
    segments, at = [], 0
    for w, n in zip(wavs, lengths):
        row[0, 0, at : at + n] = torch.from_numpy(w[:n])
        segments.append((at, at + n))
        at += n + 64
    packed = PaddedEncoder(model.encoder, model.quantizer).encode_packed(row, [segments])
    for (a, z), w in zip(segments, wavs):
        ref = model.encode(torch.from_numpy(w)[None, None])[0]
        torch.testing.assert_close(packed[0, a // 64 : z // 64], ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one hop apart"):
        PaddedEncoder(model.encoder, model.quantizer).encode_packed(row, [[(0, 640), (640, 1280)]])


@pytest.mark.parametrize("sample_rate", [8000, 16000])
def test_chunked_long_file_equals_whole_file(tmp_path, sample_rate):
    """A long file cut into pieces with receptive-field context gives the whole-file codes
    (at 16 kHz the 8 kHz clip is also resampled in streaming mode)."""
    src = _fsdd_recordings()
    wav = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in sorted(src.glob("*_theo_2.wav"))])
    sf.write(str(tmp_path / "long.wav"), wav, 8000, subtype="PCM_16")
    model = _tiny_model(sample_rate)
    ref = _reference_codes(model, tmp_path / "long.wav")
    for chunk_seconds in (0.05, 100.0):
        out = tmp_path / f"tok{chunk_seconds}"
        tk.tokenize([tmp_path / "long.wav"], model, out, chunk_seconds=chunk_seconds, batch_size=4,
                    num_workers=0, progress=False)
        (entry,) = read_tokens(out).entries
        assert entry.codes.size == len(load_audio(tmp_path / "long.wav", sample_rate)) // 64
        np.testing.assert_array_equal(entry.codes, ref)


def test_causal_encoder_needs_no_future_samples_and_streams_code_for_code(tmp_path):
    """``EncoderConfig.causal``: the codes of any prefix of a file are the first codes of the
    whole file (a centred encoder's last latent changes when more audio arrives); the fast
    encoder equals the training forward pass; ``tokenize`` in small chunks equals offline."""
    src = _fsdd_recordings()
    wav = np.concatenate([sf.read(str(p), dtype="float32")[0] for p in sorted(src.glob("*_theo_2.wav"))])
    sf.write(str(tmp_path / "long.wav"), wav, 8000, subtype="PCM_16")
    x = torch.from_numpy(load_audio(tmp_path / "long.wav", 8000))[None, None]
    x = x[..., : x.shape[-1] // 64 * 64]
    prefixes = np.linspace(3, x.shape[-1] // 64 - 1, 12).astype(int)
    changed = 0
    for causal in (True, False):
        model = _tiny_model(causal=causal)
        whole = model.encode(x)[0]
        with torch.no_grad():
            torch.testing.assert_close(model.quantizer.encode(model.encoder(x))[0], whole, rtol=0, atol=0)
        with torch.no_grad():
            latents = model.encoder(x)
            for n in prefixes:
                last = model.encoder(x[..., : n * 64])[0, :, -1]
                if causal:
                    torch.testing.assert_close(model.encode(x[..., : n * 64])[0], whole[:n], rtol=0, atol=0)
                    torch.testing.assert_close(last, latents[0, :, n - 1], rtol=1e-5, atol=1e-6)
                else:
                    changed += int(not torch.allclose(last, latents[0, :, n - 1], rtol=1e-3, atol=1e-4))
    assert changed == len(prefixes)  # the centred encoder looks ahead
    model = _tiny_model(causal=True)
    tk.tokenize([tmp_path / "long.wav"], model, tmp_path / "tok", chunk_seconds=0.05, batch_size=4,
                num_workers=0, progress=False)
    (entry,) = read_tokens(tmp_path / "tok").entries
    np.testing.assert_array_equal(entry.codes, model.encode(x)[0].numpy())


def test_a_full_disk_fails_in_one_line_and_a_rerun_completes_exactly(tmp_path, ckpt, corpus, monkeypatch, capsys):
    """ENOSPC while a shard's index or the final metadata is written: one line naming the file
    system and the file; after space is freed the same command completes to the bytes of an
    uninterrupted run, and the codes whose index was never written are removed."""
    import errno

    from vqaudio._files import DiskFullError
    from vqaudio.cli import main

    opts = dict(format="bin", shard_files=2, progress=False, num_workers=1)
    tk.tokenize(corpus, ckpt, tmp_path / "clean", **opts)
    out = tmp_path / "full"
    real = shards.atomic_write_bytes
    calls = []

    def index_fails(path, data):
        calls.append(path)
        if len(calls) == 4:  # the second shard's index: the disk fills while it is written
            from vqaudio._files import atomic_path

            with atomic_path(path) as tmp:
                tmp.write_bytes(data[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(shards, "atomic_write_bytes", index_fails)
    argv = ["tokenize", str(corpus), "--checkpoint", str(ckpt), "--out", str(out), "--format", "bin",
            "--shard-files", "2", "--no-progress", "--num-workers", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on /" in err and err.endswith(".json")
    orphan = calls[2]  # the second shard's codes, without its index
    assert orphan.exists() and not orphan.with_suffix(".json").exists()
    monkeypatch.setattr(shards, "atomic_write_bytes", real)

    import vqaudio.tokens as tokens

    real_json = tokens.atomic_write_json

    def metadata_fails(path, obj, *a, **k):
        if Path(path).name == "metadata.json":
            raise DiskFullError(errno.ENOSPC, f"no space left on / while writing {path}", str(path))
        return real_json(path, obj, *a, **k)

    monkeypatch.setattr(tokens, "atomic_write_json", metadata_fails)
    assert main(argv) == 2 and "while writing" in capsys.readouterr().err
    assert not (out / "metadata.json").exists()
    monkeypatch.setattr(tokens, "atomic_write_json", real_json)
    assert main(argv) == 0
    assert _final_bytes(out) == _final_bytes(tmp_path / "clean")
    assert not orphan.exists()


def test_bad_shard_settings_are_refused(tmp_path, ckpt, corpus):
    for files, seconds in ((0, 120.0), (2, -2.0), (2, 0.0)):
        with pytest.raises(ValueError, match="--shard-files must be >= 1 and --shard-seconds positive"):
            tk.tokenize(corpus, ckpt, tmp_path / "tok", shard_files=files, shard_seconds=seconds, progress=False)
    assert not (tmp_path / "tok").exists()


def test_verify_catches_an_edit_that_keeps_size_and_mtime(tmp_path, ckpt, corpus):
    """The default resume check (size + modification time) misses an edit that keeps both;
    ``verify`` compares the SHA-256 recorded with each file's codes and tokenizes it again,
    giving the tokens of a fresh run on the edited corpus."""
    import os

    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    opts = dict(format="bin", shard_files=3, progress=False, num_workers=0)
    out = tmp_path / "tok"
    tk.tokenize(data, ckpt, out, **opts)
    edited = data / "2_theo_1.wav"
    st = os.stat(edited)
    wav, sr = sf.read(str(edited), dtype="int16")
    sf.write(str(edited), wav[::-1].copy(), sr, subtype="PCM_16")  # the same length, other audio
    os.utime(edited, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(edited).st_size == st.st_size
    assert tk.tokenize(data, ckpt, out, **opts).num_tokenized == 0  # missed by size + mtime
    again = tk.tokenize(data, ckpt, out, verify=True, **opts)
    assert (again.num_tokenized, again.num_skipped) == (1, 7)
    tk.tokenize(data, ckpt, tmp_path / "fresh", **opts)
    assert _final_bytes(out) == _final_bytes(tmp_path / "fresh")
    assert tk.tokenize(data, ckpt, out, verify=True, **opts).num_tokenized == 0


class _Killed(Exception):
    pass


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path, ckpt, corpus, monkeypatch):
    opts = dict(format="bin", shard_files=2, progress=False, num_workers=1)
    tk.tokenize(corpus, ckpt, tmp_path / "clean", **opts)

    real_write = shards._write_shard
    calls = []

    def dying_write(codes_path, codes, index_path, index):
        calls.append(codes_path)
        if len(calls) == 2:  # killed while writing the second shard: half a temp file left
            codes_path.with_name(f".{codes_path.name}.tmp999").write_bytes(codes[: len(codes) // 2])
            raise _Killed
        real_write(codes_path, codes, index_path, index)

    monkeypatch.setattr(shards, "_write_shard", dying_write)
    with pytest.raises(_Killed):
        tk.tokenize(corpus, ckpt, tmp_path / "killed", **opts)
    assert not (tmp_path / "killed" / "metadata.json").exists()
    assert len(list((tmp_path / "killed" / "shards").glob("r000-*.json"))) == 1
    monkeypatch.setattr(shards, "_write_shard", real_write)
    summary = tk.tokenize(corpus, ckpt, tmp_path / "killed", **opts)
    assert summary.num_skipped == 2 and summary.num_tokenized == 6
    assert _final_bytes(tmp_path / "killed") == _final_bytes(tmp_path / "clean")
    assert not list((tmp_path / "killed" / "shards").glob(".*tmp*"))
    # A third run has nothing left to do and changes nothing.
    again = tk.tokenize(corpus, ckpt, tmp_path / "killed", **opts)
    assert again.num_tokenized == 0 and again.num_skipped == 8
    assert _final_bytes(tmp_path / "killed") == _final_bytes(tmp_path / "clean")
    # --overwrite starts again from nothing (and deletes only token directories)
    (tmp_path / "killed" / "shards" / "stale.json").write_text("{}")
    fresh = tk.tokenize(corpus, ckpt, tmp_path / "killed", overwrite=True, **opts)
    assert (fresh.num_tokenized, fresh.num_skipped) == (8, 0)
    assert not (tmp_path / "killed" / "shards" / "stale.json").exists()
    assert _final_bytes(tmp_path / "killed") == _final_bytes(tmp_path / "clean")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a vqaudio token directory"):
        tk.tokenize(corpus, ckpt, tmp_path / "mine", overwrite=True, **opts)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_two_processes_give_the_one_process_output(tmp_path, ckpt, corpus):
    one = tk.tokenize(corpus, ckpt, tmp_path / "one", format="jsonl", progress=False, num_workers=0)
    two = tk.tokenize(corpus, ckpt, tmp_path / "two", format="jsonl", progress=False, num_workers=0,
                      num_processes=2)
    assert two.num_tokenized == one.num_tokenized == 8
    assert {p.name[:4] for p in (tmp_path / "two" / "shards").glob("r0*.json")} == {"r000", "r001"}
    assert _final_bytes(tmp_path / "two") == _final_bytes(tmp_path / "one")


def _write_bad_files(root: Path) -> dict[str, str]:
    (root / "0_bad_0.wav").write_text("this is not audio")
    sf.write(str(root / "1_bad_0.wav"), np.zeros(0, np.float32), 8000)
    nan = np.full(800, 0.1, np.float32)
    nan[400] = np.nan
    sf.write(str(root / "2_bad_0.wav"), nan, 8000, subtype="FLOAT")
    sf.write(str(root / "3_bad_0.wav"), np.full(20, 0.1, np.float32), 8000)
    (root / "4_bad_0.wav").symlink_to(root / "gone.wav")  # dangling
    (root / "5_bad_0.wav").symlink_to(root / "5_bad_0.wav")  # a loop
    (root / "6_bad_0.wav").mkdir()  # a folder with an audio name
    os.mkfifo(root / "7_bad_0.wav")  # reading it would block
    return {"0_bad_0.wav": "cannot decode", "1_bad_0.wav": "no audio samples",
            "2_bad_0.wav": "NaN", "3_bad_0.wav": "too short",
            "4_bad_0.wav": "dangling symbolic link", "5_bad_0.wav": "symbolic link loop",
            "6_bad_0.wav": "is a directory", "7_bad_0.wav": "not a regular file"}


def test_bad_files_are_listed_and_counted(tmp_path, ckpt, corpus):
    root = tmp_path / "mixed"
    shutil.copytree(corpus, root)
    bad = _write_bad_files(root)
    parser = argparse.ArgumentParser()
    tk_cli.add_tokenize_arguments(parser)
    args = parser.parse_args([str(root), "--checkpoint", str(ckpt), "--out", str(tmp_path / "tok"),
                              "--no-progress", "--num-workers", "2"])
    assert tk_cli.run_tokenize(args) == 1  # some files failed
    lines = (tmp_path / "tok" / "failures.tsv").read_text().splitlines()
    assert lines[0] == "path\treason" and len(lines) == 1 + len(bad)
    for line in lines[1:]:
        path, reason = line.split("\t")
        assert bad[path] in reason, (path, reason)
    ts = read_tokens(tmp_path / "tok")
    assert len(ts) == 8 and ts.metadata["num_failures"] == 8
    summary = tk.tokenize(root, ckpt, tmp_path / "tok", progress=False)
    assert summary.num_failed == 8 and "8 failed" in summary.describe()


def test_unreadable_file_says_permission_denied(tmp_path, monkeypatch):
    from vqaudio.audio import AudioError, check_readable

    clip = tmp_path / "x.wav"
    sf.write(str(clip), np.zeros(100, np.float32), 8000)
    check_readable(clip)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # the test may run as root
    with pytest.raises(AudioError, match=r"x\.wav: permission denied"):
        check_readable(clip)


def test_refuses_foreign_output_and_other_checkpoint(tmp_path, ckpt, corpus):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a vqaudio token directory"):
        tk.tokenize(corpus, ckpt, tmp_path / "user", progress=False)
    tk.tokenize(corpus, ckpt, tmp_path / "tok", progress=False)
    other = tmp_path / "other"
    _tiny_model(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="checkpoint_id"):
        tk.tokenize(corpus, other, tmp_path / "tok", progress=False)


@pytest.mark.parametrize("fmt", ["bin", "jsonl"])
def test_detokenize_writes_audio_of_the_right_length(tmp_path, ckpt, fmt, capsys):
    src = _fsdd_recordings()
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("5_george_1.wav", "6_lucas_1.wav"):  # short cuts keep sample-by-sample decoding quick
        wav, sr = sf.read(str(src / name), dtype="float32")
        sf.write(str(clips / name), wav[2000:2000 + 5 * 64 + 10], sr)
    tk.tokenize(clips, ckpt, tmp_path / "tok", format=fmt, progress=False)
    parser = argparse.ArgumentParser()
    tk_cli.add_detokenize_arguments(parser)
    args = parser.parse_args([str(tmp_path / "tok"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "wav"),
                              "--no-progress"])
    assert tk_cli.run_detokenize(args) == 0
    for e in read_tokens(tmp_path / "tok"):
        assert e.codes.size == 5
        wav, sr = sf.read(str(tmp_path / "wav" / e.path), dtype="float32")
        assert sr == 8000 and wav.shape == (5 * 64,)
        assert np.isfinite(wav).all() and np.abs(wav).max() <= 1.0
    # Decoding one file at a time gives the same audio as the batch (noise of each entry's own).
    one = dt.detokenize(tmp_path / "tok", ckpt, tmp_path / "one", batch_size=1, progress=False)
    assert len(one) == 2
    for path in one:
        np.testing.assert_array_equal(sf.read(str(path))[0], sf.read(str(tmp_path / "wav" / path.name))[0])
    # A resumed run (the first file done, the second not) writes what the fresh run wrote.
    (tmp_path / "one" / one[1].name).unlink()
    resumed = dt.detokenize(tmp_path / "tok", ckpt, tmp_path / "one", progress=False)
    assert [p.name for p in resumed] == [one[1].name]
    assert "1 of the WAV files exist" in capsys.readouterr().err  # and says that it kept one
    np.testing.assert_array_equal(sf.read(str(resumed[0]))[0], sf.read(str(tmp_path / "wav" / one[1].name))[0])
    # Tokens of another checkpoint are refused.
    other = tmp_path / "other"
    _tiny_model(seed=1).save_pretrained(other)
    with pytest.raises(ValueError, match="checkpoint"):
        dt.detokenize(tmp_path / "tok", other, tmp_path / "wav2", progress=False)


def test_detokenize_keeps_same_stem_files_apart(tmp_path, ckpt):
    """x.wav and x.flac decode to x.wav and x.flac.wav: neither overwrites the other."""
    src = _fsdd_recordings()
    clips = tmp_path / "clips"
    clips.mkdir()
    wav, sr = sf.read(str(src / "5_george_1.wav"), dtype="float32")
    sf.write(str(clips / "5_george_1.wav"), wav[2000:2000 + 3 * 64], sr)
    sf.write(str(clips / "5_george_1.flac"), wav[3000:3000 + 4 * 64], sr)
    tk.tokenize(clips, ckpt, tmp_path / "tok", progress=False)
    written = dt.detokenize(tmp_path / "tok", ckpt, tmp_path / "wav", progress=False)
    assert sorted(p.name for p in written) == ["5_george_1.flac.wav", "5_george_1.wav"]
    assert sf.info(str(tmp_path / "wav" / "5_george_1.wav")).frames == 3 * 64
    assert sf.info(str(tmp_path / "wav" / "5_george_1.flac.wav")).frames == 4 * 64
    assert dt.output_names(["a/x.mp3", "a/x.flac", "a/y.flac"]) == [Path("a/x.mp3.wav"), Path("a/x.flac.wav"),
                                                                    Path("a/y.wav")]
    with pytest.raises(ValueError, match="would both be decoded"):
        dt.output_names(["x.flac", "x.flac"])


def test_rerun_tokenizes_a_changed_input_again(tmp_path, ckpt, corpus):
    root = tmp_path / "fsdd"
    shutil.copytree(corpus, root)
    first = tk.tokenize(root, ckpt, tmp_path / "tok", progress=False)
    assert first.num_tokenized == 8
    changed = root / "0_theo_1.wav"
    shutil.copy(_fsdd_recordings() / "9_theo_7.wav", changed)  # another recording under the same name
    again = tk.tokenize(root, ckpt, tmp_path / "tok", progress=False)
    assert (again.num_tokenized, again.num_skipped) == (1, 7)
    entry = next(e for e in read_tokens(tmp_path / "tok") if e.path == "0_theo_1.wav")
    np.testing.assert_array_equal(entry.codes, _reference_codes(_tiny_model(), changed))
    assert len(read_tokens(tmp_path / "tok")) == 8
    assert tk.tokenize(root, ckpt, tmp_path / "tok", progress=False).num_tokenized == 0


def test_rerun_in_another_format_reuses_the_shards(tmp_path, ckpt, corpus):
    tk.tokenize(corpus, ckpt, tmp_path / "tok", format="bin", progress=False)
    before = read_tokens(tmp_path / "tok")
    again = tk.tokenize(corpus, ckpt, tmp_path / "tok", format="jsonl", offset=7, progress=False)
    assert again.num_tokenized == 0 and again.num_skipped == 8  # nothing encoded again
    assert (tmp_path / "tok" / "data" / "train.jsonl").is_file() and not (tmp_path / "tok" / "tokens.bin").exists()
    after = read_tokens(tmp_path / "tok")
    assert after.metadata["format"] == "jsonl" and after.metadata["offset"] == 7
    assert len(after) == len(before) == 8
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a.codes, b.codes)


def test_auto_num_processes_uses_the_cores_on_cpu_only(monkeypatch, ckpt):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(tk, "available_cores", lambda: 4)
    per = tk.FILES_PER_PROCESS
    assert tk.auto_num_processes(1000, ckpt, "cpu") == 4
    assert tk.auto_num_processes(2 * per, ckpt, "cpu") == 2  # start-up cost: enough files each
    assert tk.auto_num_processes(per - 1, ckpt, "cpu") == 1
    assert tk.auto_num_processes(1000, ckpt, "cuda:0") == 1  # GPUs: accelerate launch
    assert tk.auto_num_processes(1000, ckpt, "cpu", rank=0) == 1  # already one of several
    assert tk.auto_num_processes(1000, VQVAE.from_pretrained(ckpt), "cpu") == 1  # no path to load
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert tk.auto_num_processes(1000, ckpt, "cpu") == 1


def test_retain_freed_memory_stops_page_faults_from_freed_activations():
    import subprocess
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc settings: Linux only")
    # In a fresh process: allocate and free 64 MB forty times, as batches of activations are.
    script = ("import resource, sys, numpy as np\n"
              "from vqaudio._system import retain_freed_memory\n"
              "ok = retain_freed_memory() if sys.argv[1] == '1' else True\n"
              "np.ones(1 << 24, np.float32).sum()\n"
              "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
              "for _ in range(40):\n"
              "    np.ones(1 << 24, np.float32).sum()\n"
              "print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)\n")
    faults = {}
    for retain in ("0", "1"):
        out = subprocess.run([sys.executable, "-c", script, retain], capture_output=True, text=True, check=True)
        ok, n = out.stdout.split()
        assert ok == "True"
        faults[retain] = int(n)
    # By default every 64 MiB block is handed back and faulted in anew: at least one fault per
    # 2 MiB (huge) page, 40 * 32 in all; retained, the memory is reused.
    assert faults["0"] >= 40 * 32
    assert faults["1"] <= faults["0"] // 10
