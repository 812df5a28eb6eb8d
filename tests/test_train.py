"""Training with Accelerate: configs, run directories, checkpoints and resume, examples, the recipe.

End-to-end runs go through ``recipes/train_vctk.py`` in a subprocess (Accelerate allows one
set of Accelerator settings per process), with a tiny model on real FSDD clips and one
intra-op thread (faster than two for models this small, and fair to a shared machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import sigterm_when, tiny_vqvae
from vqaudio.config import EncoderConfig, VQVAEConfig, config_to_dict
from vqaudio.model import VQVAE
from vqaudio.plots import log_spectrogram, plot_spectrograms, plot_training_curves
from vqaudio.runs import (
    checkpoint_dirs,
    iter_metric,
    latest_checkpoint,
    learning_rate_factor,
    read_metrics,
)
from vqaudio.train import (
    RESUMABLE_FIELDS,
    TrainConfig,
    build_model_config,
    initialize_from,
    train,
    write_examples,
)
from vqaudio.train_cli import add_train_arguments, configs_from_args

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "train_vctk.py"
RECORDINGS = REPO / "samples" / "fsdd" / "recordings"

#: A tiny model: 8 kHz, 32 codes of 8 dims, a 5-layer WaveNet (receptive field 32 samples).
#: Fast EMA (decay 0.9) and a high restart threshold so that dead codes come back within
#: the few dozen steps of a test.
TINY_MODEL = [
    "--sample-rate", "8000", "--encoder-channels", "8,8,16,16,16,16", "--codebook-size", "32",
    "--code-dim", "8", "--num-stacks", "1", "--layers-per-stack", "5", "--residual-channels", "16",
    "--gate-channels", "32", "--skip-channels", "16", "--speaker-channels", "8",
    "--ema-decay", "0.9", "--dead-code-threshold", "0.2",
]


def run_recipe(data: Path, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python recipes/train_vctk.py --data-dir DATA --out OUT --stages vqvae --cpu --quiet ARGS``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(RECIPE), "--data-dir", str(data), "--out", str(out), "--stages", "vqvae",
           "--cpu", "--quiet", *TINY_MODEL, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"recipe failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def short_fsdd(root: Path, speakers=("nicolas", "theo", "yweweler"), per_speaker: int = 6) -> tuple[Path, int]:
    """A small FSDD tree of each speaker's shortest real clips among takes 5-14 (all training
    utterances under FSDD's official split, which holds out takes 0-4).

    Returns ``(root, longest clip in samples)``.
    """
    rec = root / "recordings"
    rec.mkdir(parents=True)
    longest = 0
    for s in speakers:
        clips = sorted((sf.info(f).frames, f) for f in RECORDINGS.glob(f"*_{s}_*.wav")
                       if int(f.stem.split("_")[2]) >= 5)[:per_speaker]
        for frames, f in clips:
            shutil.copy(f, rec / f.name)
            longest = max(longest, frames)
    return root, longest


# ----- configs ------------------------------------------------------------------------------------


def test_segment_length_is_rounded_to_whole_hops():
    cfg = TrainConfig(segment_seconds=0.5, example_seconds=0.3)
    assert cfg.segment_length(16000) == 8000
    assert TrainConfig(segment_seconds=0.25).segment_length(8000) == 1984  # 31.25 hops -> 31
    assert TrainConfig(segment_seconds=0.001).segment_length(8000) == 64  # at least one hop
    assert cfg.example_length(16000) == 4800  # 75 hops


@pytest.mark.parametrize("bad", [
    {"batch_size": 0}, {"segment_seconds": 0.0}, {"learning_rate": float("nan")},
    {"mixed_precision": "fp8"}, {"valid_every": -1}, {"adam_betas": (0.9, 1.0)},
])
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_build_model_config_maps_sizes():
    cfg = build_model_config(sample_rate=8000, code_dim=16, residual_channels=32, num_stacks=3,
                             encoder_channels=[8, 8, 8, 8, 8, 8], codebook_size=128, ema=False)
    assert cfg.sample_rate == 8000 and cfg.hop_length == 64
    assert cfg.quantizer.dim == cfg.decoder.local_channels == 16
    assert cfg.decoder.residual_channels == 32 and cfg.decoder.num_stacks == 3
    assert cfg.encoder.channels == (8,) * 6
    assert cfg.quantizer.codebook_size == 128 and cfg.quantizer.ema is False
    assert build_model_config(residual_channels=None) == VQVAEConfig()  # None = keep the default
    with pytest.raises(ValueError, match="unknown model size"):
        build_model_config(residual_chanels=32)


def test_cli_options_map_to_configs(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["data", "--out", str(tmp_path / "run"), "--batch-size", "4",
                              "--residual-channels", "32", "--lr", "1e-3", "--no-preload"])
    model_cfg, train_cfg = configs_from_args(args, args.out)
    assert train_cfg == TrainConfig(batch_size=4, learning_rate=1e-3, preload=False)
    assert model_cfg == build_model_config(residual_channels=32)


def test_resume_takes_saved_configs_and_explicit_overrides(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved_train = TrainConfig(batch_size=3, max_steps=10)
    saved_model = build_model_config(sample_rate=8000, residual_channels=8)
    (run / "train_config.json").write_text(json.dumps({"format_version": 1, "config": config_to_dict(saved_train)}))
    (run / "model_config.json").write_text(json.dumps(config_to_dict(saved_model)))
    (run / "speakers.json").write_text('["a"]')
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["data", "--out", str(run), "--resume", "--max-steps", "20"])
    model_cfg, train_cfg = configs_from_args(args, run)
    assert model_cfg == saved_model
    assert train_cfg == TrainConfig(batch_size=3, max_steps=20)
    assert "max_steps" in RESUMABLE_FIELDS and "batch_size" not in RESUMABLE_FIELDS
    # changing what defines the run is refused, before anything is touched
    with pytest.raises(ValueError, match="batch_size: saved 3, given 5"):
        train(RECORDINGS, run, saved_model, TrainConfig(batch_size=5), resume=True, cpu=True)


# ----- run directory protection -------------------------------------------------------------------


def test_refuses_a_non_empty_run_dir(tmp_path):
    previous_run = tmp_path / "run"
    previous_run.mkdir()
    (previous_run / "train_config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(RECORDINGS, previous_run, cpu=True)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(FileExistsError, match="not a vqaudio run directory"):
            train(RECORDINGS, other, cpu=True, **kwargs)
    assert (other / "thesis.tex").read_text() == "precious"
    assert (previous_run / "train_config.json").read_text() == "{}"


def test_checkpoint_dirs_skip_partial_ones(tmp_path):
    ck = tmp_path / "checkpoints"
    for name in ("step_0000010", "step_0000002", ".step_0000030.tmp", "notes"):
        (ck / name).mkdir(parents=True)
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["step_0000002", "step_0000010"]
    assert latest_checkpoint(tmp_path).name == "step_0000010"
    assert latest_checkpoint(tmp_path / "missing") is None


# ----- plots and examples -------------------------------------------------------------------------


def test_spectrogram_png_of_real_speech(tmp_path):
    wav, sr = sf.read(RECORDINGS / "3_jackson_5.wav", dtype="float32")
    spec = log_spectrogram(wav, n_fft=256, hop_length=64)
    assert spec.shape == (129, 1 + len(wav) // 64)
    assert spec.max() - spec.min() == pytest.approx(80.0, abs=1e-3)  # clipped to top_db
    png = plot_spectrograms(tmp_path / "figs" / "s.png", {"a": wav, "b": torch.from_numpy(wav)[None]}, sr)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert list(png.parent.iterdir()) == [png]  # no temporary file left
    with pytest.raises(ValueError, match="one channel"):
        log_spectrogram(np.zeros((2, 100), np.float32))


def test_training_curves_png(tmp_path):
    records = [{"step": 10, "train/reconstruction_loss": 5.5, "train/codes_in_use": 3.0},
               {"step": 20, "train/reconstruction_loss": 5.0, "train/codes_in_use": 40.0},
               {"step": 20, "valid/reconstruction_loss": 5.1, "valid/codes_in_use": 50}]
    png = plot_training_curves(tmp_path / "m.png", records, title="run")
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 10_000


def test_write_examples_decodes_reconstruction_and_conversion(tmp_path):
    model = tiny_vqvae(["george", "jackson", "theo"], encoder_channels=(4,) * 6, codebook_size=8, dim=4,
                       layers_per_stack=2, residual_channels=4, gate_channels=8, skip_channels=4,
                       local_channels=4, speaker_channels=2).train()
    written = write_examples(model, RECORDINGS / "3_jackson_5.wav", "jackson", tmp_path / "ex", num_samples=500)
    assert set(written) == {"original", "reconstruction", "conversion_to_theo", "spectrograms"}
    for name in ("original", "reconstruction", "conversion_to_theo"):
        wav, sr = sf.read(written[name])
        assert sr == 8000 and len(wav) == 448  # 500 samples -> 7 whole hops
    assert written["spectrograms"].suffix == ".png"


# ----- end to end -----------------------------------------------------------------------------------


def test_tiny_model_learns_on_fsdd_and_writes_a_complete_run(tmp_path):
    out = tmp_path / "exp"
    proc = run_recipe(
        REPO / "samples" / "fsdd", out, "--max-steps", "30", "--batch-size", "8",
        "--segment-seconds", "0.128", "--lr", "3e-3", "--log-every", "10", "--valid-every", "15",
        "--checkpoint-every", "15", "--keep-last", "1", "--example-seconds", "0.1",
        "--split", "per-speaker", "--num-valid-per-speaker", "2",
    )
    run = out / "vqvae"
    assert "trained 30 steps" in proc.stdout

    records = read_metrics(run)
    loss = dict(iter_metric(records, "train/loss"))
    assert sorted(loss) == [10, 20, 30]
    assert loss[30] < loss[10] - 0.1, loss  # nats per sample
    valid = dict(iter_metric(records, "valid/loss"))
    assert sorted(valid) == [15, 30] and valid[30] < valid[15]
    used = [r["train/codes_in_use_window"] for r in records if "train/codes_in_use_window" in r]
    assert max(used[1:]) > 1, used  # not collapsed onto one code
    last = [r for r in records if "train/loss" in r][-1]
    assert last["train/bits_per_sample"] == pytest.approx(last["train/reconstruction_loss"] / np.log(2), rel=1e-4)
    for key in ("train/commitment_loss", "train/perplexity", "train/lr", "train/samples_per_second"):
        assert key in last

    assert (run / "metrics.png").stat().st_size > 10_000
    model = VQVAE.from_pretrained(run)  # the run directory works as --checkpoint
    assert model.sample_rate == 8000 and model.speakers == json.loads((run / "speakers.json").read_text())
    assert [d.name for d in checkpoint_dirs(run)] == ["step_0000030"]  # keep_last 1
    assert json.loads((run / "train_config.json").read_text())["config"]["max_steps"] == 30
    for step in ("step_0000015", "step_0000030"):
        ex = run / "examples" / step
        names = sorted(p.name for p in ex.iterdir())
        assert names == ["conversion_to_yweweler.wav", "original.wav", "reconstruction.wav", "spectrograms.png"]
        wav, sr = sf.read(ex / "reconstruction.wav")
        assert sr == 8000 and len(wav) == 768 and np.isfinite(wav).all()

    # a second fresh run into the same folder is refused and changes nothing
    before = (run / "metrics.jsonl").read_text()
    proc = run_recipe(REPO / "samples" / "fsdd", out, "--max-steps", "2", check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert (run / "metrics.jsonl").read_text() == before


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    # Crops are a function of (seed, epoch, utterance), so the interrupted and the
    # uninterrupted run see identical data; segments as long as every clip keep the test
    # independent of that, so it checks the loop's own state (step, epoch, batches, RNG).
    data, longest = short_fsdd(tmp_path / "fsdd")
    segment_seconds = -(-longest // 64) * 64 / 8000
    common = ["--batch-size", "4", "--segment-seconds", str(segment_seconds), "--lr", "3e-3",
              "--log-every", "2", "--valid-every", "0", "--checkpoint-every", "6", "--keep-last", "2",
              "--example-seconds", "0.02", "--max-steps", "10"]
    run_recipe(data, tmp_path / "straight", *common)
    straight = tmp_path / "straight" / "vqvae"
    assert [d.name for d in checkpoint_dirs(straight)] == ["step_0000006", "step_0000010"]

    # A copy of the run as if it had crashed after logging step 8: its latest checkpoint is
    # step 6 (18 training clips -> 4 batches per epoch: the middle of epoch 1).
    crashed = tmp_path / "crashed" / "vqvae"
    shutil.copytree(straight, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_0000010")
    shutil.rmtree(crashed / "model")
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] <= 8))

    proc = run_recipe(data, crashed.parent, "--resume", *common)
    assert "from step_0000006 (step 6, epoch 1)" in proc.stdout

    a = VQVAE.from_pretrained(straight).state_dict()
    b = VQVAE.from_pretrained(crashed).state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    # the metrics after the checkpoint were dropped and logged again, equal to the first run's
    assert [r["step"] for r in read_metrics(crashed)] == [2, 4, 6, 8, 10]
    timing = ("wall_seconds", "train/segments_per_second", "train/samples_per_second", "train/realtime_factor")

    def untimed(records):
        return [{k: v for k, v in r.items() if k not in timing} for r in records]

    assert untimed(read_metrics(crashed)) == untimed(read_metrics(straight))


def test_resume_skips_damaged_checkpoints_and_says_why(tmp_path):
    """Each checkpoint carries a manifest (sizes and SHA-256, written last); ``--resume`` skips a
    damaged newest checkpoint with a line naming it and the problem, resumes from the newest
    intact one, and fails with one line when none is intact. A checkpoint without a manifest
    (written before manifests existed) that cannot be loaded is skipped the same way."""
    data, _ = short_fsdd(tmp_path / "fsdd", speakers=("nicolas", "theo"))
    common = ["--batch-size", "2", "--segment-seconds", "0.128", "--log-every", "1", "--valid-every", "0",
              "--checkpoint-every", "2", "--keep-last", "5", "--example-seconds", "0.02"]
    run_recipe(data, tmp_path / "out", *common, "--max-steps", "4")
    run = tmp_path / "out" / "vqvae"
    step2, step4 = checkpoint_dirs(run)
    manifest = json.loads((step4 / "manifest.json").read_text())["files"]
    assert "model.safetensors" in manifest and "optimizer.bin" in manifest
    weights = step4 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    proc = run_recipe(data, tmp_path / "out", "--resume", *common, "--max-steps", "6")
    assert f"skipping checkpoint step_0000004: model.safetensors has 100 bytes, {manifest['model.safetensors']['size']}" in proc.stdout
    assert "from step_0000002 (step 2" in proc.stdout
    assert [d.name for d in checkpoint_dirs(run)][-1] == "step_0000006"

    for folder in checkpoint_dirs(run):  # every checkpoint damaged; one without its manifest
        (folder / "random_states_0.pkl").write_bytes(b"half")  # Accelerate alone loads past this
    (checkpoint_dirs(run)[0] / "manifest.json").unlink()
    optimizer = checkpoint_dirs(run)[0] / "optimizer.bin"
    optimizer.write_bytes(optimizer.read_bytes()[:50])
    proc = run_recipe(data, tmp_path / "out", "--resume", *common, "--max-steps", "8", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(error) == 1 and "no intact checkpoint to resume from" in error[0]
    assert "random_states_0.pkl has 4 bytes" in error[0] and "step_0000002: cannot be loaded" in error[0]


def test_a_batch_too_big_for_memory_is_refused_before_the_first_step(tmp_path):
    """The activation estimate matches what a step of fsdd-8k's recipe holds (about 0.96 GB for
    batch 8 x 0.5 s at residual 32, measured 0.93 GB), and 30 s segments of the default model
    are refused in one line, before the run folder or the data are touched."""
    from vqaudio.train import activation_bytes, check_activation_memory

    half = build_model_config(sample_rate=8000, residual_channels=32, gate_channels=64, skip_channels=32)
    assert 0.9e9 < activation_bytes(half, 8, 4032, "no") < 1.05e9
    assert activation_bytes(half, 8, 4032, "bf16") < 0.6 * activation_bytes(half, 8, 4032, "no")
    recipe = TrainConfig(batch_size=8, segment_seconds=0.5)
    check_activation_memory(half, recipe, "no", "cpu", available=21 * 2**30)
    huge = TrainConfig(batch_size=8, segment_seconds=30.0)
    with pytest.raises(ValueError, match=r"about 2\d\d.\d GiB of activations \(batch 8 x 30 s segments x 20 WaveNet "
                                         r"layers.*21.0 GiB is available on the cpu; lower --segment-seconds"):
        check_activation_memory(VQVAEConfig(), huge, "no", "cpu", available=21 * 2**30)
    with pytest.raises(ValueError, match="GiB of activations"):
        train(tmp_path / "no-data", tmp_path / "run", VQVAEConfig(), dataclasses.replace(huge, segment_seconds=3000.0),
              cpu=True, progress=False)
    assert not (tmp_path / "run").exists()


def test_two_processes_keep_the_codebook_identical(tmp_path):
    # torch.distributed on CPU (gloo): DDP with broadcast_buffers=False; the quantizer's
    # all-reduced EMA keeps the buffers equal, which check_buffers_in_sync verifies at the
    # checkpoint (it raises, failing the run, if any buffer differs between the processes).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), str(RECIPE), "--data-dir", str(REPO / "samples" / "fsdd"),
           "--out", str(tmp_path), "--stages", "vqvae", "--cpu", "--quiet", *TINY_MODEL,
           "--max-steps", "6", "--batch-size", "4", "--segment-seconds", "0.128", "--lr", "3e-3",
           "--log-every", "3", "--valid-every", "0", "--checkpoint-every", "6", "--example-seconds", "0.02"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deprecated" not in proc.stderr
    ckpt = tmp_path / "vqvae" / "checkpoints" / "step_0000006"
    assert sorted(p.name for p in ckpt.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]
    records = read_metrics(tmp_path / "vqvae")
    assert [r["step"] for r in records] == [3, 6]
    assert records[0]["train/segments_per_second"] > 0
    assert VQVAE.from_pretrained(tmp_path / "vqvae").quantizer.initialized


def test_initialize_from_copies_weights_and_speaker_rows_by_name():
    cfg = build_model_config(VQVAEConfig(sample_rate=8000, encoder=EncoderConfig(channels=(8, 8, 8, 8, 8, 8))),
                             codebook_size=16, code_dim=8, num_stacks=1, layers_per_stack=3,
                             residual_channels=8, gate_channels=16, skip_channels=8, speaker_channels=4)
    torch.manual_seed(0)
    source = VQVAE(build_model_config(cfg, num_speakers=3), ["ann", "bob", "cy"])
    target = VQVAE(build_model_config(cfg, num_speakers=2), ["dee", "bob"])
    dee_before = target.decoder.speaker_embedding.weight[0].clone()
    assert initialize_from(target, source) == ["bob"]
    emb_s, emb_t = source.decoder.speaker_embedding.weight, target.decoder.speaker_embedding.weight
    torch.testing.assert_close(emb_t[1], emb_s[1], rtol=0, atol=0)
    torch.testing.assert_close(emb_t[0], dee_before, rtol=0, atol=0)  # a new speaker keeps its row
    s_state, t_state = source.state_dict(), target.state_dict()
    for name in s_state:
        if name != "decoder.speaker_embedding.weight":
            torch.testing.assert_close(t_state[name], s_state[name], rtol=0, atol=0, msg=name)

    wider = VQVAE(build_model_config(cfg, num_speakers=1, residual_channels=16), ["ann"])
    with pytest.raises(ValueError, match="differs"):
        initialize_from(wider, source)


def test_mixed_precision_auto_follows_the_hardware(monkeypatch):
    from vqaudio import _system

    assert _system.resolve_mixed_precision("no", "cpu") == "no"
    assert _system.resolve_mixed_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(_system, "has_fast_bf16", lambda device_type: device_type == "cpu")
    assert _system.resolve_mixed_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(_system, "has_fast_bf16", lambda device_type: False)
    assert _system.resolve_mixed_precision("auto", "cpu") == "no"
    with pytest.raises(ValueError, match="auto, no, fp16, bf16"):
        _system.resolve_mixed_precision("fp32", "cpu")
    assert TrainConfig().mixed_precision == "auto"


def test_init_from_max_minutes_and_warmup_through_the_recipe(tmp_path):
    common = ["--batch-size", "4", "--segment-seconds", "0.128", "--lr", "3e-3", "--valid-every", "0",
              "--example-seconds", "0.02", "--log-every", "1"]
    first_data, _ = short_fsdd(tmp_path / "fsdd1", speakers=("nicolas", "theo"))
    run_recipe(first_data, tmp_path / "first", *common, "--max-steps", "2")
    first = VQVAE.from_pretrained(tmp_path / "first" / "vqvae")

    # a new run on other speakers, from the first run's weights, out of time after one step
    data, _ = short_fsdd(tmp_path / "fsdd2", speakers=("george", "theo"))
    second = ["--init-from", str(tmp_path / "first" / "vqvae"), "--warmup-steps", "4", *common]
    proc = run_recipe(data, tmp_path / "second", *second, "--max-steps", "50", "--max-minutes", "0.0001")
    assert "--max-minutes reached in stage vqvae" in proc.stderr and "Traceback" not in proc.stderr
    assert re.search(r"stopped after [0-9.e-]+ minutes at step 1;", proc.stdout), proc.stdout
    run = tmp_path / "second" / "vqvae"
    assert [d.name for d in checkpoint_dirs(run)] == ["step_0000001"]
    init = json.loads((run / "init_from.json").read_text())
    assert init["checkpoint_id"] == first.checkpoint_id and init["speakers_copied"] == ["theo"]
    session = json.loads((run / "sessions.jsonl").read_text().splitlines()[-1])
    assert session["stopped"] == "max_minutes" and (session["start_step"], session["end_step"]) == (0, 1)
    assert session["mixed_precision"] in ("bf16", "no") and session["samples_seen"] == 4 * 1024

    # resumed: the run's own checkpoint wins over --init-from; warm-up goes on from step 1
    proc = run_recipe(data, tmp_path / "second", *second, "--max-steps", "3", "--resume")
    assert "trained 3 steps" in proc.stdout
    lr = dict(iter_metric(read_metrics(run), "train/lr"))
    assert lr == pytest.approx({1: 3e-3 / 4, 2: 3e-3 * 2 / 4, 3: 3e-3 * 3 / 4})
    sessions = [json.loads(ln) for ln in (run / "sessions.jsonl").read_text().splitlines()]
    assert [(s["start_step"], s["end_step"], s["stopped"]) for s in sessions] == [(0, 1, "max_minutes"), (1, 3, "max_steps")]

    # a model option that contradicts the checkpoint is refused in one line
    proc = run_recipe(data, tmp_path / "third", *second, "--max-steps", "1", "--residual-channels", "8", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "residual_channels: checkpoint 16, given 8" in proc.stderr


def test_learning_rate_schedules_shared_by_both_trainers(tmp_path):
    assert [learning_rate_factor(s, 2, 10, "constant") for s in (0, 1, 2, 9, 50)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    cosine = [learning_rate_factor(s, 2, 10, "cosine") for s in range(12)]
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine[6] == pytest.approx(0.55) and cosine[10:] == [0.1, 0.1]
    assert all(a > b for a, b in zip(cosine[2:10], cosine[3:11]))
    with pytest.raises(ValueError, match="constant"):
        learning_rate_factor(0, 0, 10, "linear")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")

    # the VQ-VAE trainer follows it step by step (the prior's LambdaLR uses the same function)
    data, _ = short_fsdd(tmp_path / "fsdd", speakers=("nicolas", "theo"))
    run_recipe(data, tmp_path / "out", "--batch-size", "2", "--segment-seconds", "0.128", "--lr", "1e-3",
               "--valid-every", "0", "--example-seconds", "0.02", "--log-every", "1", "--max-steps", "4",
               "--warmup-steps", "1", "--lr-schedule", "cosine")
    lr = dict(iter_metric(read_metrics(tmp_path / "out" / "vqvae"), "train/lr"))
    assert lr == pytest.approx({s + 1: 1e-3 * learning_rate_factor(s, 1, 4, "cosine") for s in range(4)})


def test_resume_keeps_the_runs_split_and_warns_about_padding_only_segments(tmp_path):
    data, _ = short_fsdd(tmp_path / "fsdd", per_speaker=4)
    common = ["--batch-size", "4", "--lr", "3e-3", "--log-every", "1", "--valid-every", "1",
              "--example-seconds", "0.02", "--num-valid-per-speaker", "1"]
    proc = run_recipe(data, tmp_path / "out", *common, "--max-steps", "1", "--split", "per-speaker",
                      "--segment-seconds", "5")
    assert "warning: segments of 5.000 s are longer than every training utterance" in proc.stderr
    run = tmp_path / "out" / "vqvae"
    held_out = json.loads((run / "data.json").read_text())["valid_utterances"]
    assert len(held_out) == 3  # per-speaker: FSDD's official split would hold out none of these takes
    # resumed without --split: the run's split, the same held-out utterances
    proc = run_recipe(data, tmp_path / "out", *common, "--max-steps", "2", "--segment-seconds", "5", "--resume")
    assert "trained 2 steps" in proc.stdout and "3 held-out" in proc.stdout
    proc = run_recipe(data, tmp_path / "out", *common, "--max-steps", "3", "--segment-seconds", "5", "--resume",
                      "--split", "official", check=False)
    assert proc.returncode == 2 and "trained with split_method 'per-speaker', not 'official'" in proc.stderr


def test_sigterm_stops_at_the_end_of_a_step_with_a_checkpoint(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vqaudio.cli", "train", str(REPO / "samples" / "fsdd"), "--out", str(run),
           "--cpu", "--quiet", *TINY_MODEL, "--max-steps", "100000", "--batch-size", "4",
           "--segment-seconds", "0.128", "--log-every", "1", "--valid-every", "0", "--example-seconds", "0.02"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = run / "metrics.jsonl"
    out, err = sigterm_when(proc, lambda: metrics.is_file() and bool(metrics.read_text().strip()))
    assert proc.returncode == 0, err
    step = json.loads((run / "sessions.jsonl").read_text())["end_step"]
    assert f"stopped by a signal at step {step}" in out
    assert [d.name for d in checkpoint_dirs(run)] == [f"step_{step:07d}"]
    assert json.loads((run / "sessions.jsonl").read_text())["stopped"] == "signal"


def test_a_killed_session_is_recorded_up_to_its_last_checkpoint(tmp_path):
    """The session line is written at the start and at every checkpoint, so a session killed
    with SIGKILL still counts up to its last checkpoint; the next session marks it killed."""
    import signal
    import time

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vqaudio.cli", "train", str(REPO / "samples" / "fsdd"), "--out", str(run),
           "--cpu", "--quiet", *TINY_MODEL, "--batch-size", "4", "--segment-seconds", "0.128", "--log-every", "1",
           "--valid-every", "0", "--checkpoint-every", "1", "--example-seconds", "0.02"]
    proc = subprocess.Popen([*cmd, "--max-steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 120
    while len(checkpoint_dirs(run)) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (killed,) = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines()]
    assert killed["stopped"] == "running" and killed["end_step"] >= 1 and killed["session_seconds"] > 0
    assert killed["samples_seen"] == killed["end_step"] * 4 * 1024 and killed["wall_seconds_total"] > 0
    last = int(checkpoint_dirs(run)[-1].name[5:])
    done = subprocess.run([*cmd, "--resume", "--max-steps", str(last + 1)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    first, second = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines()]
    assert first["stopped"] == "killed" and first["session_id"] == killed["session_id"]
    assert (second["start_step"], second["end_step"], second["stopped"]) == (last, last + 1, "max_steps")


def test_sessions_record_the_command_as_a_user_types_it(tmp_path, monkeypatch):
    """No interpreter or installation folder in the records: the console script and ``python -m
    vqaudio.cli`` are ``vqaudio``, a script is ``python`` and its path from the working folder."""
    from vqaudio.runs import command_line

    assert command_line(["/root/.pyenv/versions/3.11.7/bin/vqaudio", "train", "d", "--out", "my run"]) == \
        "vqaudio train d --out 'my run'"
    assert command_line(["/opt/venv/lib/python3.11/site-packages/vqaudio/cli.py", "train", "d"]) == "vqaudio train d"
    monkeypatch.chdir(REPO)
    assert command_line([str(RECIPE), "--data-dir", "x"]) == "python recipes/train_vctk.py --data-dir x"
    assert command_line(["/elsewhere/tool.py", "-v"]) == "python tool.py -v"


def test_recipe_without_data_dir_says_how_to_get_vctk():
    proc = subprocess.run([sys.executable, str(RECIPE)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "https://datashare.ed.ac.uk/handle/10283/3443" in proc.stderr
    assert "wav48_silence_trimmed" in proc.stderr and "--data-dir" in proc.stderr


def test_recipe_reports_a_bad_corpus_in_one_line(tmp_path):
    (tmp_path / "flat").mkdir()
    shutil.copy(RECORDINGS / "0_theo_5.wav", tmp_path / "flat" / "hello.wav")
    proc = run_recipe(tmp_path / "flat", tmp_path / "out", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cannot recognise the corpus layout" in proc.stderr


def test_conditioning_stack_and_mel_loss_from_the_command_line(tmp_path):
    data, _ = short_fsdd(tmp_path / "fsdd", speakers=("nicolas", "theo"))
    run_recipe(data, tmp_path / "out", "--batch-size", "2", "--segment-seconds", "0.128", "--lr", "1e-3",
               "--valid-every", "2", "--example-seconds", "0.02", "--log-every", "1", "--max-steps", "2",
               "--condition-layers", "1", "--condition-channels", "8", "--mel-loss-weight", "0.1", "--mel-bands", "12",
               "--time-jitter", "0.12", "--input-noise", "0.01", "--split", "per-speaker", "--num-valid-per-speaker", "1")
    run = tmp_path / "out" / "vqvae"
    records = read_metrics(run)
    assert [s for s, _ in iter_metric(records, "train/mel_loss")] == [1, 2]
    assert [s for s, _ in iter_metric(records, "valid/mel_loss")] == [2]
    model = VQVAE.from_pretrained(run)
    d = model.config.decoder
    assert (d.condition_layers, d.condition_channels, d.mel_loss_weight, d.mel_bands, d.time_jitter, d.input_noise) == (
        1, 8, 0.1, 12, 0.12, 0.01)


def test_pre_emphasis_and_speaker_adversary_from_the_command_line(tmp_path):
    """``--pre-emphasis``, ``--speaker-adversary``, ``--causal-encoder``, ``--lpc-order`` and
    ``--gain-jitter`` reach the checkpoint's config (whose examples are decoded with them), and the adversary's
    accuracy is logged in training and validation."""
    data, _ = short_fsdd(tmp_path / "fsdd", speakers=("nicolas", "theo"))
    run_recipe(data, tmp_path / "out", "--batch-size", "2", "--segment-seconds", "0.128", "--lr", "1e-3",
               "--valid-every", "2", "--example-seconds", "0.02", "--log-every", "1", "--max-steps", "2",
               "--pre-emphasis", "0.85", "--speaker-adversary", "0.5", "--causal-encoder", "--lpc-order", "6",
               "--gain-jitter", "12",
               "--mel-loss-weight", "0.1", "--mel-bands", "12", "--split", "per-speaker",
               "--num-valid-per-speaker", "1")
    run = tmp_path / "out" / "vqvae"
    records = read_metrics(run)
    accuracy = list(iter_metric(records, "train/speaker_adversary_acc"))
    assert [s for s, _ in accuracy] == [1, 2] and all(0 <= a <= 1 for _, a in accuracy)
    assert [s for s, _ in iter_metric(records, "train/speaker_adversary_loss")] == [1, 2]
    assert [s for s, _ in iter_metric(records, "valid/speaker_adversary_acc")] == [2]
    config = VQVAE.from_pretrained(run).config
    d = config.decoder
    assert (d.pre_emphasis, d.speaker_adversary, d.lpc_order, config.encoder.causal) == (0.85, 0.5, 6, True)
    assert config.encoder.gain_jitter_db == 12.0
    assert list((run / "examples").rglob("*.wav"))


def test_init_from_adds_conditioning_blocks_without_changing_the_decoding():
    """A trained model continued with conditioning blocks and the mel loss added (or dropped):
    the new blocks start as the identity, so the new model decodes exactly as the old one."""
    from conftest import tiny_vqvae

    from vqaudio.train import _check_init_config

    source = tiny_vqvae(["a", "b"], seed=0)
    grown = tiny_vqvae(["a", "b"], seed=1, condition_layers=2, condition_channels=8, mel_loss_weight=1.0,
                       time_jitter=0.12, input_noise=0.01, temperature=0.6)
    _check_init_config("plain", source.config, grown.config)  # allowed (the temperature is a decoding setting)
    assert initialize_from(grown, source) == ["a", "b"]
    codes = torch.randint(0, 16, (2, 5))
    kw = dict(temperature=0.0, generator=torch.Generator().manual_seed(0), method="torch")
    assert torch.equal(grown.decode(codes, [0, 1], **kw), source.decode(codes, [0, 1], **kw))
    shrunk = tiny_vqvae(["a", "b"], seed=2)
    assert initialize_from(shrunk, grown) == ["a", "b"]  # the blocks it does not have are left out
    with pytest.raises(ValueError, match="residual_channels"):
        _check_init_config("plain", source.config, tiny_vqvae(["a"], residual_channels=16).config)
