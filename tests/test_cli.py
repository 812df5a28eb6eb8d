"""``vqaudio reconstruct`` and ``vqaudio convert`` as a user runs them (through :func:`vqaudio.cli.main`)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from conftest import tiny_vqvae
from vqaudio.cli import main
from vqaudio.inference import infer_speaker

HOP = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random VQ-VAE at 8 kHz whose speakers are two of the bundled FSDD sample's."""
    path = tmp_path_factory.mktemp("cli") / "ckpt"
    tiny_vqvae(["george", "jackson"]).save_pretrained(path)
    return path


def test_reconstruct_and_convert_write_the_decoded_wav(checkpoint, fsdd_sample_dir, tmp_path, capsys):
    clip = fsdd_sample_dir / "recordings" / "0_george_0.wav"  # speaker guessed from the name
    frames = sf.info(str(clip)).frames // HOP
    out = tmp_path / "rec.wav"
    assert main(["reconstruct", str(clip), "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    assert "speaker george" in capsys.readouterr().out
    wav, sr = sf.read(str(out))
    assert sr == 8000 and wav.shape == (frames * HOP,) and np.abs(wav).max() <= 1.0

    conv = tmp_path / "conv.wav"
    args = ["convert", str(clip), "--speaker", "jackson", "--checkpoint", str(checkpoint), "--out", str(conv)]
    assert main(args) == 0
    assert "speaker jackson" in capsys.readouterr().out
    assert sf.info(str(conv)).frames == frames * HOP
    # the same seed gives the same audio; the numba and torch paths agree sample for sample
    again = tmp_path / "conv_torch.wav"
    assert main([*args[:-1], str(again), "--method", "torch"]) == 0
    np.testing.assert_array_equal(sf.read(str(again))[0], sf.read(str(conv))[0])


def test_cli_errors_are_one_line_and_keep_existing_files(checkpoint, fsdd_sample_dir, tmp_path, capsys):
    clip = fsdd_sample_dir / "recordings" / "0_george_0.wav"
    out = tmp_path / "out.wav"
    out.write_bytes(b"user data")
    assert main(["convert", str(clip), "--speaker", "jackson", "--checkpoint", str(checkpoint), "--out", str(out)]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"user data"

    assert main(["convert", str(clip), "--speaker", "nobody", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqaudio convert: error: unknown speaker 'nobody'; known speakers: george, jackson")
    assert "Traceback" not in err and not (tmp_path / "x.wav").exists()

    unknown = tmp_path / "hello.wav"  # a name and folder that tell no speaker
    sf.write(str(unknown), np.zeros(800, np.float32), 8000)
    assert main(["reconstruct", str(unknown), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "y.wav")]) == 2
    assert "cannot tell the speaker from the file name; pass --speaker (known speakers: george, jackson)" in capsys.readouterr().err

    short = tmp_path / "short.wav"
    sf.write(str(short), np.zeros(10, np.float32), 8000)
    assert main(["convert", str(short), "--speaker", "george", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "z.wav")]) == 2
    assert "shorter than one code" in capsys.readouterr().err

    assert main(["convert", str(clip), "--speaker", "george", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "w.wav")]) == 2
    assert "no such checkpoint directory" in capsys.readouterr().err

    # a missing input is named as such, even where the speaker would have to be guessed
    assert main(["reconstruct", str(tmp_path / "missing.wav"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "m.wav")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"vqaudio reconstruct: error: {tmp_path / 'missing.wav'}: file not found"

    # truncated weights: one line naming the file, in every command that loads the model
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in checkpoint.iterdir():
        (cut / f.name).write_bytes(f.read_bytes())
    (cut / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes()[:200])
    for command in (["reconstruct", str(clip), "--out", str(tmp_path / "c.wav")],
                    ["tokenize", str(clip), "--out", str(tmp_path / "tokens")],
                    ["evaluate", str(fsdd_sample_dir), "--out", str(tmp_path / "eval"), "--max-clips", "1"]):
        assert main([*command, "--checkpoint", str(cut)]) == 2, command
        err = capsys.readouterr().err
        assert f"{cut / 'model.safetensors'}: cannot read the weights" in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_infer_speaker_from_corpus_names():
    speakers = ["george", "p225", "SF1"]
    assert infer_speaker("a/7_george_3.wav", speakers) == "george"
    assert infer_speaker("wav48_silence_trimmed/p225/p225_001_mic1.flac", speakers) == "p225"
    assert infer_speaker("vcc2016/train/SF1/100001.flac", speakers) == "SF1"
    assert infer_speaker("x/7_lucas_3.wav", speakers) is None  # a name not in the table


def test_an_unknown_flag_prints_the_subcommands_usage(checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reconstruct", "x.wav", "--checkpoint", str(checkpoint), "--out", "y.wav", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vqaudio reconstruct") and "unrecognized arguments: --bogus" in err


def test_impossible_numbers_and_device_flags_are_one_line_errors(checkpoint, fsdd_sample_dir, tmp_path, capsys):
    """A float option that is inf or nan is refused at parsing, naming the option, in every
    command; ``--device auto`` (the trainers' default) works in every command, ``--device cuda``
    without a GPU is named as such, and ``--quiet`` is ``--no-progress`` everywhere."""
    import torch

    clip = next((fsdd_sample_dir / "recordings").glob("*_george_*.wav"))
    for command in (["generate", "--speaker", "george", "--checkpoint", str(checkpoint), "--prior", "p",
                     "--out", str(tmp_path / "g"), "--seconds"],
                    ["infill", str(clip), "--checkpoint", str(checkpoint), "--prior", "p", "--out",
                     str(tmp_path / "i.wav"), "--start", "0.1", "--end"],
                    ["convert", str(clip), "--speaker", "jackson", "--checkpoint", str(checkpoint), "--out",
                     str(tmp_path / "c.wav"), "--temperature"]):
        for value in ("inf", "nan"):
            with pytest.raises(SystemExit) as exit_info:
                main([*command, value])
            assert exit_info.value.code == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert f"{command[-1]}: expected a finite number, got {value}" in err, err
    out = tmp_path / "auto.wav"
    assert main(["reconstruct", str(clip), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "auto",
                 "--quiet", "--method", "torch"]) == 0 and out.is_file()
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert main(["reconstruct", str(clip), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "cuda.wav"),
                     "--device", "cuda"]) == 2
        assert capsys.readouterr().err.strip() == "vqaudio reconstruct: error: --device cuda: no GPU is available"
    from vqaudio.cli import build_parser

    parser = build_parser()
    for command in ("train", "train-prior", "tokenize", "detokenize", "reconstruct", "convert", "generate", "infill",
                    "evaluate"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        assert "--quiet" in capsys.readouterr().out, command


def test_a_file_too_long_to_decode_is_refused_from_its_header(checkpoint, tmp_path, capsys):
    """A WAV whose header claims 2^30 samples (a sparse 2 GiB file) is refused before it is
    read, with one line giving what it would need and what to do instead."""
    import struct

    huge = tmp_path / "0_george_9.wav"
    data = 2**30 * 2  # 16-bit mono at 8 kHz: 37 hours
    with open(huge, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
                + b"data" + struct.pack("<I", data))
        f.truncate(44 + data)  # sparse: takes no disk space
    assert sf.info(str(huge)).frames == 2**30
    assert main(["reconstruct", str(huge), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "r.wav")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"vqaudio reconstruct: error: {huge}: 1073741824 samples at 8000 Hz")
    assert "GiB to encode and decode in one piece" in err and "vqaudio tokenize" in err
    from vqaudio.inference import check_decode_memory
    from vqaudio.model import VQVAE

    check_decode_memory(VQVAE.from_pretrained(checkpoint), huge, available=2**50)  # fits where there is room


def test_every_command_that_runs_a_model_takes_the_shared_flags(capsys):
    from vqaudio.cli import build_parser

    parser = build_parser()
    shared = {"--device", "--no-progress"}
    decoding = {"--method", "--seed", "--temperature"}
    for command in ("train", "train-prior", "tokenize", "detokenize", "reconstruct", "convert", "generate", "evaluate"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        wanted = shared | (decoding if command in ("detokenize", "reconstruct", "convert", "generate", "evaluate") else set())
        assert all(flag in text for flag in wanted), (command, [f for f in wanted if f not in text])
        if "--method" in wanted:
            assert "{auto,numba,torch,cuda}" in text, command
    # the commands that decode audio share one definition of the decoding flags: same help, default, choices
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def decoding_flags(command):
        return {a.option_strings[0]: (a.help, a.default, a.choices) for a in sub.choices[command]._actions
                if a.option_strings and a.option_strings[0] in decoding | {"--device", "--no-progress"}}

    reference = decoding_flags("reconstruct")
    assert set(reference) == decoding | {"--device", "--no-progress"}
    for command in ("convert", "infill", "detokenize"):
        assert decoding_flags(command) == reference, command
    # and the commands that sample a prior, one definition of its sampling flags
    prior_flags = {"--steps", "--sampler", "--prior-temperature", "--top-k", "--top-p", "--allow-mismatch"}

    def sampling_flags(command):
        return {a.option_strings[0]: (a.help, a.default) for a in sub.choices[command]._actions
                if a.option_strings and a.option_strings[0] in prior_flags}

    assert set(sampling_flags("generate")) == prior_flags
    assert sampling_flags("infill") == sampling_flags("generate") == sampling_flags("evaluate")
    from vqaudio.nn.diffusion_prior import SAMPLERS

    sampler = next(a for a in sub.choices["generate"]._actions if "--sampler" in a.option_strings)
    assert tuple(sampler.choices) == SAMPLERS and sampler.default == SAMPLERS[0]
    # the trainers' --cpu is --device cpu
    for argv in (["train", "d", "--out", "o", "--cpu"], ["train-prior", "t", "--out", "o", "--cpu"]):
        assert parser.parse_args(argv).device == "cpu"
        assert parser.parse_args(argv[:-1]).device == "auto"


def test_a_full_disk_is_one_line_naming_the_file_system_and_the_file(checkpoint, fsdd_sample_dir, tmp_path, capsys,
                                                                      monkeypatch):
    """ENOSPC, EDQUOT and EROFS from any writer, and libsndfile's bare "System error" on a file
    system with no space left, end as one line naming the file system and the file; no
    temporary file is left and an existing output is kept."""
    import errno
    import os

    import vqaudio._files as files
    from vqaudio.audio import save_audio

    out = tmp_path / "kept.json"
    out.write_text("old")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full)
        with pytest.raises(files.DiskFullError, match=f"no space left on .* while writing {out}"):
            files.atomic_write_json(out, {"a": 1})
    assert out.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["kept.json"]

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", read_only)
        with pytest.raises(files.DiskFullError, match="is a read-only file system: cannot write"):
            files.atomic_write_json(tmp_path / "new.json", {})

    def system_error(*args, **kwargs):
        raise RuntimeError("Error opening '...': System error.")

    monkeypatch.setattr("soundfile.write", system_error)
    with pytest.raises(RuntimeError, match="System error"):  # space left: the writer's own error
        save_audio(tmp_path / "x.wav", np.zeros(64, np.float32), 8000)
    monkeypatch.setattr(files, "out_of_space", lambda path, margin=1 << 16: True)
    clip = next((fsdd_sample_dir / "recordings").glob("*_george_*.wav"))
    wav = tmp_path / "r.wav"
    assert main(["reconstruct", str(clip), "--checkpoint", str(checkpoint), "--out", str(wav), "--method", "torch",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vqaudio reconstruct: error: no space left on /")
    assert err.endswith(f"while writing {wav}") and not wav.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
