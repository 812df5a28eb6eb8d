"""Tests of prior training on a tokens folder (vqaudio/prior_train.py) and of generation
(vqaudio/generate.py): tiny models, real FSDD audio, CPU, a few seconds each."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import vqaudio

from conftest import sigterm_when
from conftest import tiny_vqvae as random_tiny_vqvae
from vqaudio.generate import add_generate_arguments, generate, run_generate
from vqaudio.model import VQVAE, UnknownSpeakerError
from vqaudio.nn.prior import PriorConfig, PriorTransformer
from vqaudio.runs import iter_metric, read_metrics
from vqaudio.prior_train import (
    CodeSequence,
    CodeWindowDataset,
    ValidationChunks,
    split_entries,
    train_prior,
    unigram_statistics,
)

REPO = Path(__file__).resolve().parents[1]
RECORDINGS = REPO / "samples" / "fsdd" / "recordings"
SPEAKERS = ["jackson", "theo"]


def tiny_vqvae(seed: int = 0) -> VQVAE:
    """A tiny VQ-VAE whose codebook is initialised from encoder outputs on real speech (the
    quantizer's data-dependent init on the first training batch), so its codes vary."""
    from vqaudio.audio import load_audio

    model = random_tiny_vqvae(SPEAKERS, seed)
    wavs = [load_audio(f, 8000)[:2048] for f in sorted(RECORDINGS.glob("*_jackson_*.wav"))[:8]]
    batch = torch.from_numpy(np.stack([np.pad(w, (0, 2048 - len(w))) for w in wavs]))[:, None]
    with torch.no_grad():
        model.train()(batch, torch.zeros(len(wavs), dtype=torch.long))
    return model.eval()


def tiny_prior_for(vqvae: VQVAE, max_len: int = 32) -> PriorTransformer:
    torch.manual_seed(1)
    cfg = PriorConfig(codebook_size=16, num_speakers=2, d_model=32, n_layers=2, n_heads=2, max_len=max_len, dropout=0.0)
    return PriorTransformer(cfg, SPEAKERS, metadata={"checkpoint_id": vqvae.checkpoint_id}).eval()


@pytest.fixture(scope="module")
def saved_vqvae(tmp_path_factory) -> tuple[VQVAE, Path]:
    if not RECORDINGS.is_dir():
        pytest.skip(f"bundled FSDD sample missing at {RECORDINGS}")
    path = tmp_path_factory.mktemp("vqvae") / "ckpt"
    model = tiny_vqvae()
    model.save_pretrained(path)
    return VQVAE.from_pretrained(path), path


# ----------------------------------------------------------------------------- data pieces


def test_split_is_per_speaker_deterministic_and_order_free():
    seqs = [CodeSequence(f"{spk}/{i}.wav", s, np.arange(5)) for s, spk in enumerate("ab") for i in range(10)]
    train, val = split_entries(seqs, 0.2)
    assert len(val) == 4 and {s.speaker for s in val} == {0, 1}
    assert not {s.path for s in train} & {s.path for s in val}
    train2, val2 = split_entries(list(reversed(seqs)), 0.2)
    assert {s.path for s in val2} == {s.path for s in val}
    _, val_one = split_entries([CodeSequence("x", 0, np.arange(3)), CodeSequence("y", 0, np.arange(3))], 0.01)
    assert len(val_one) == 1  # at least one per speaker with two or more utterances


def test_windows_are_reproducible_padded_and_start_at_utterance_starts():
    seqs = [CodeSequence("long", 0, np.arange(100) % 16), CodeSequence("short", 1, np.array([3, 4, 5]))]
    ds = CodeWindowDataset(seqs, window=8, length=200, seed=0, start_prob=0.5)
    items = [ds[i] for i in range(200)]
    assert all(torch.equal(a["codes"], b["codes"]) for a, b in zip(items, [ds[i] for i in range(200)]))
    shorts = [it for it in items if int(it["speaker"]) == 1]
    assert shorts and all(it["codes"].tolist() == [3, 4, 5] + [-100] * 5 for it in shorts)
    longs = [it["codes"] for it in items if int(it["speaker"]) == 0]
    starts = sum(int(c[0]) == 0 and int(c[1]) == 1 for c in longs)
    assert 0.3 * len(longs) < starts < 0.8 * len(longs)  # start_prob=0.5 (+ uniform offsets at 0)
    chunks = ValidationChunks(seqs, window=8)
    scored = sum(int((chunks[i]["codes"] != -100).sum()) for i in range(len(chunks)))
    assert scored == 103 and len(chunks) == 13 + 1


def test_unigram_statistics():
    train = [CodeSequence("a", 0, np.array([0, 0, 1, 1]))]
    val = [CodeSequence("b", 0, np.array([0, 1, 2, 3])), CodeSequence("c", 1, np.array([5, 5, 5, 5]))]
    stats = unigram_statistics(train, val, codebook_size=8)
    assert stats["uniform_bits"] == 3.0
    assert stats["train_unigram_entropy_bits"] == pytest.approx(1.0)
    p = np.array([1, 1, 1, 1, 4]) / 8
    assert stats["unigram_entropy_bits"] == pytest.approx(float(-(p * np.log2(p)).sum()))
    assert stats["speaker_unigram_entropy_bits"] == pytest.approx(1.0)  # (4 * 2 + 4 * 0) / 8


# ----------------------------------------------------------------------------- training


def _train_prior_cmd(tokens: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``vqaudio train-prior`` through its CLI glue, in a subprocess (one Accelerator per process)."""
    code = (
        "import argparse, sys\n"
        "from vqaudio.prior_train_cli import add_train_prior_arguments, run_train_prior\n"
        "p = argparse.ArgumentParser(prog='vqaudio train-prior'); add_train_prior_arguments(p)\n"
        "try:\n    sys.exit(run_train_prior(p.parse_args(sys.argv[1:])))\n"
        "except (FileExistsError, ValueError) as e:\n    print(e, file=sys.stderr); sys.exit(2)\n"
    )
    args = [str(tokens), "--out", str(out), "--d-model", "32", "--layers", "2", "--heads", "2",
            "--max-len", "64", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--eval-every", "10",
            "--save-every", "10", "--val-fraction", "0.2", "--cpu", "--no-progress", *extra]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


def _real_tokens(vqvae, tokens: Path) -> Path:
    """A token folder of 15 real FSDD clips per speaker, encoded by ``vqvae``."""
    from vqaudio.audio import load_audio
    from vqaudio.tokens import TokenEntry, write_token_dir

    entries = []
    for spk in SPEAKERS:
        for f in sorted(RECORDINGS.glob(f"*_{spk}_*.wav"))[:15]:
            wav = torch.from_numpy(load_audio(f, vqvae.sample_rate))[None, None]
            entries.append(TokenEntry(f.name, spk, vqvae.encode(wav)[0].numpy()))
    meta = {"checkpoint_id": vqvae.checkpoint_id, "sample_rate": vqvae.sample_rate, "hop_length": 64,
            "codebook_size": 16, "speakers": SPEAKERS}
    write_token_dir(tokens, entries, meta)
    return tokens


def test_train_prior_on_real_tokens_then_resume(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    tokens = _real_tokens(vqvae, tmp_path / "tokens")
    out = tmp_path / "prior"
    done = _train_prior_cmd(tokens, out, "--max-steps", "20", "--log-every", "5")
    assert done.returncode == 0, done.stderr
    # the learning curve and the session records of a VQ-VAE run, written by the same code
    curve = read_metrics(out)
    assert [step for step, _ in iter_metric(curve, "train/loss")] == [5, 10, 15, 20]
    assert [step for step, _ in iter_metric(curve, "valid/bits_per_code")] == [10, 20]
    assert all(r["train/lr"] > 0 and r["train/codes_per_second"] > 0 for r in curve if "train/loss" in r)
    session = json.loads((out / "sessions.jsonl").read_text())
    assert (session["start_step"], session["end_step"], session["stopped"]) == (0, 20, "max_steps")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 20
    assert math.isfinite(metrics["val_bits_per_code"])
    assert metrics["val_bits_per_code"] < metrics["uniform_bits"] == 4.0
    assert metrics["codes_in_use"] > 4 and metrics["unigram_entropy_bits"] > 1.0  # real, varied tokens
    assert "unigram entropy" in done.stdout and "bits/code" in done.stdout
    prior = PriorTransformer.from_pretrained(out)
    assert prior.speakers == SPEAKERS and prior.metadata["checkpoint_id"] == vqvae.checkpoint_id
    assert (out / "checkpoints" / "step_00000020" / "trainer_state.json").is_file()

    with pytest.raises(FileExistsError, match="--resume"):  # raised before any Accelerator exists
        train_prior(tokens, out)
    with pytest.raises(ValueError, match="not both"):
        train_prior(tokens, out, resume=True, overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not a prior run"):
        train_prior(tokens, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"

    resumed = _train_prior_cmd(tokens, out, "--max-steps", "30", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout and "step_00000020" in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == 30 and [h["step"] for h in metrics["history"]] == [10, 20, 30]
    assert [step for step, _ in iter_metric(read_metrics(out), "train/loss")] == [5, 10, 15, 20, 25, 30]
    assert json.loads((out / "train_config.json").read_text())["mixed_precision"] in ("bf16", "no")  # auto, resolved

    # another setting on resume is refused, naming it, instead of being ignored
    refused = _train_prior_cmd(tokens, out, "--max-steps", "40", "--resume", "--d-model", "64", "--lr", "1e-3")
    assert refused.returncode == 2
    assert "(--d-model: saved 32, given 64; --learning-rate: saved 0.003, given 0.001); only --max-steps may change" in refused.stderr

    # out of time after one more step: validated and checkpointed there; --resume goes on from it
    stopped = _train_prior_cmd(tokens, out, "--max-steps", "1000", "--resume", "--max-minutes", "0.0001")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped after 0.0001 minutes at step 31" in stopped.stdout
    assert (out / "checkpoints" / "step_00000031" / "trainer_state.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["history"][-1]["step"] == 31
    sessions = [json.loads(ln) for ln in (out / "sessions.jsonl").read_text().splitlines()]
    assert [(s["start_step"], s["end_step"], s["stopped"]) for s in sessions] == [
        (0, 20, "max_steps"), (20, 30, "max_steps"), (30, 31, "max_minutes")]

    # a damaged newest checkpoint (its manifest tells) is skipped, saying why
    weights = out / "checkpoints" / "step_00000031" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    skipped = _train_prior_cmd(tokens, out, "--max-steps", "32", "--resume")
    assert skipped.returncode == 0, skipped.stderr
    assert "skipping checkpoint step_00000031: model.safetensors has 64 bytes" in skipped.stdout
    assert "step_00000030" in skipped.stdout

    # --overwrite: the run is deleted and trained again from step 0
    again = _train_prior_cmd(tokens, out, "--max-steps", "2", "--overwrite")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "metrics.json").read_text())["step"] == 2
    assert len((out / "sessions.jsonl").read_text().splitlines()) == 1


def test_recipe_prior_sizes_fit_the_device(monkeypatch):
    from vqaudio.prior_train import PriorTrainConfig
    from vqaudio.prior_train_cli import CPU_PRIOR, add_prior_recipe_arguments, prior_configs_from_recipe_args

    parser = argparse.ArgumentParser()
    add_prior_recipe_arguments(parser)
    parser.add_argument("--cpu", action="store_true")
    model, train = prior_configs_from_recipe_args(parser.parse_args(["--cpu"]))
    assert (model.d_model, model.n_layers, model.max_len) == (CPU_PRIOR["d_model"], CPU_PRIOR["n_layers"], 256)
    assert (train.max_steps, train.window, train.learning_rate) == (3000, 128, 1e-3)
    model, train = prior_configs_from_recipe_args(parser.parse_args(["--cpu", "--prior-d-model", "64", "--prior-steps", "7"]))
    assert (model.d_model, train.max_steps) == (64, 7)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    model, train = prior_configs_from_recipe_args(parser.parse_args([]))
    assert (model.d_model, train.max_steps, train.window) == (PriorConfig().d_model, PriorTrainConfig().max_steps, None)


def test_prior_schedule_is_the_same_with_two_processes(saved_vqvae, tmp_path):
    # Accelerate's scheduler wrapper would step the schedule once per process: warm-up over
    # in half the steps with two. The trainer steps it once per optimizer step.
    vqvae, _ = saved_vqvae
    tokens = _real_tokens(vqvae, tmp_path / "tokens")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29500 + (os.getpid() + 7) % 1000), "-m", "vqaudio.cli", "train-prior", str(tokens),
           "--out", str(tmp_path / "prior"), "--d-model", "32", "--layers", "1", "--heads", "2", "--max-len", "64",
           "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "10", "--max-steps", "10", "--eval-every", "5",
           "--save-every", "10", "--val-fraction", "0.2", "--cpu", "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    history = json.loads((tmp_path / "prior" / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == [5, 10]
    assert history[0]["learning_rate"] == pytest.approx(1e-3 * 6 / 10)  # lambda(5) = (5 + 1) / 10


@pytest.mark.parametrize("prior_type", ["autoregressive", "diffusion"])
def test_prior_resume_continues_exactly_like_an_uninterrupted_run(saved_vqvae, tmp_path, prior_type):
    """20 steps in one go, and the same run resumed from its step-10 checkpoint as if it had
    crashed after it: the same weights, bit for bit, and the same validation figures (the
    windows are a function of the step; the dropout and noise generators are checkpointed)."""
    import shutil

    from vqaudio.generate import load_prior

    vqvae, _ = saved_vqvae
    tokens = _real_tokens(vqvae, tmp_path / "tokens")
    extra = ("--type", prior_type, "--dropout", "0.1", "--mixed-precision", "no", "--log-every", "5") + (
        ("--timesteps", "8") if prior_type == "diffusion" else ())
    whole = _train_prior_cmd(tokens, tmp_path / "whole", "--max-steps", "20", *extra)
    assert whole.returncode == 0, whole.stderr
    split = tmp_path / "split"
    shutil.copytree(tmp_path / "whole", split)
    shutil.rmtree(split / "checkpoints" / "step_00000020")
    for name in ("model.safetensors", "config.json", "speakers.json", "metrics.json"):
        (split / name).unlink()
    second = _train_prior_cmd(tokens, split, "--max-steps", "20", "--resume")
    assert second.returncode == 0, second.stderr
    assert "step_00000010" in second.stdout
    a, b = load_prior(tmp_path / "whole"), load_prior(tmp_path / "split")
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    ha = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"]
    hb = json.loads((tmp_path / "split" / "metrics.json").read_text())["history"]
    assert [h["val_bits_per_code"] for h in ha] == [h["val_bits_per_code"] for h in hb]
    # metrics.jsonl: the lines after the resumed checkpoint were dropped and logged again, the same
    untimed = [{k: v for k, v in r.items() if k not in ("wall_seconds", "train/codes_per_second")}
               for r in read_metrics(split)]
    assert untimed == [{k: v for k, v in r.items() if k not in ("wall_seconds", "train/codes_per_second")}
                       for r in read_metrics(tmp_path / "whole")]


@pytest.mark.parametrize("model, priors", [("fsdd-8k", ("prior", "diffusion")), ("vcc2016-16k", ("prior", "diffusion"))])
def test_bundled_priors_load_by_name_and_fit_the_bundled_model(model, priors):
    """The bundled MODEL-prior (and MODEL-diffusion) were fitted to tokens of the bundled MODEL:
    new weights of MODEL must ship with priors retrained on their tokens
    (``tools/bundled_priors.sh MODEL``; each card says so)."""
    from vqaudio.generate import check_compatible, load_prior
    from vqaudio.nn.diffusion_prior import DiffusionPrior

    vqvae = VQVAE.from_pretrained(model)
    for kind in priors:
        prior = load_prior(f"{model}-{kind}")
        assert isinstance(prior, {"prior": PriorTransformer, "diffusion": DiffusionPrior}[kind])
        assert prior.speakers == vqvae.speakers
        check_compatible(vqvae, prior)  # the checkpoint_id of the tokens' VQ-VAE is the bundled model's


def test_train_prior_stops_at_sigterm_with_a_checkpoint(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    tokens = _real_tokens(vqvae, tmp_path / "tokens")
    out = tmp_path / "prior"
    cmd = [sys.executable, "-m", "vqaudio.cli", "train-prior", str(tokens), "--out", str(out), "--d-model", "32",
           "--layers", "1", "--heads", "2", "--max-len", "64", "--batch-size", "4", "--max-steps", "100000",
           "--valid-every", "5", "--checkpoint-every", "100000", "--val-fraction", "0.2", "--cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    stdout, stderr = sigterm_when(proc, lambda: (out / "metrics.json").is_file())  # the first validation, step 5
    assert proc.returncode == 0, stderr
    step = json.loads((out / "metrics.json").read_text())["step"]
    assert step >= 5 and f"stopped by a signal at step {step}, with a checkpoint" in stdout
    assert (out / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").is_file()
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- generation


def test_train_diffusion_prior_on_real_tokens_resume_and_generate(saved_vqvae, tmp_path):
    """`train-prior --type diffusion`: the same trainer, checkpoints and metrics, the bound in
    bits/code next to the unigram entropy; `generate --steps` samples its whole utterance."""
    from vqaudio.nn.diffusion_prior import DiffusionPrior

    vqvae, ckpt = saved_vqvae
    tokens = _real_tokens(vqvae, tmp_path / "tokens")
    out = tmp_path / "prior"
    done = _train_prior_cmd(tokens, out, "--type", "diffusion", "--timesteps", "8", "--max-steps", "20")
    assert done.returncode == 0, done.stderr
    assert "diffusion prior:" in done.stdout and "validation bound" in done.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["prior_type"] == "diffusion" and metrics["step"] == 20
    assert math.isfinite(metrics["val_bits_per_code"]) and metrics["unigram_entropy_bits"] > 1.0
    prior = DiffusionPrior.from_pretrained(out)
    assert prior.config.num_timesteps == 8 and prior.metadata["checkpoint_id"] == vqvae.checkpoint_id
    resumed = _train_prior_cmd(tokens, out, "--max-steps", "30", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert [h["step"] for h in json.loads((out / "metrics.json").read_text())["history"]] == [10, 20, 30]
    wrong = _train_prior_cmd(tokens, out, "--max-steps", "40", "--resume", "--type", "autoregressive")
    assert wrong.returncode == 2 and "cannot resume a diffusion prior as --type autoregressive" in wrong.stderr
    only = _train_prior_cmd(tokens, tmp_path / "ar", "--max-steps", "5", "--timesteps", "8")
    assert only.returncode == 2 and "--timesteps: only for --type diffusion" in only.stderr

    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--speaker", "theo", "--seconds", "0.2", "--num", "2", "--steps", "4", "--checkpoint",
                              str(ckpt), "--prior", str(out), "--out", str(tmp_path / "gen"), "--no-progress"])
    assert run_generate(args) == 0
    codes = np.load(tmp_path / "gen" / "theo_001.npy")
    assert codes.shape == (round(0.2 * 125),) and codes.min() >= 0 and codes.max() < 16
    assert sf.info(tmp_path / "gen" / "theo_001.wav").frames == len(codes) * 64
    prompt = RECORDINGS / "3_jackson_2.wav"
    (s,) = generate(vqvae, prior, "jackson", 0.05, tmp_path / "p", prompt=prompt, steps=3, progress=False)
    from vqaudio.generate import encode_prompt

    prompt_codes = encode_prompt(vqvae, prompt)[0].numpy()
    np.testing.assert_array_equal(np.load(s.codes_path)[: len(prompt_codes)], prompt_codes)
    ar = tmp_path / "arprior"
    tiny_prior_for(vqvae).save_pretrained(ar)
    bad = parser.parse_args(["--speaker", "theo", "--steps", "4", "--checkpoint", str(ckpt), "--prior", str(ar),
                             "--out", str(tmp_path / "gen2")])
    with pytest.raises(ValueError, match="--steps is for a diffusion prior"):
        run_generate(bad)
    bad = parser.parse_args(["--speaker", "theo", "--sampler", "confidence", "--checkpoint", str(ckpt), "--prior",
                             str(ar), "--out", str(tmp_path / "gen2")])
    with pytest.raises(ValueError, match="--sampler is for a diffusion prior"):
        run_generate(bad)
    # MaskGIT-style decoding, from the command line: codes of the requested length, none masked
    args = parser.parse_args(["--speaker", "theo", "--seconds", "0.2", "--steps", "3", "--sampler", "confidence",
                              "--checkpoint", str(ckpt), "--prior", str(out), "--out", str(tmp_path / "conf"),
                              "--no-progress"])
    assert run_generate(args) == 0
    codes = np.load(tmp_path / "conf" / "theo_000.npy")
    assert codes.shape == (round(0.2 * 125),) and codes.min() >= 0 and codes.max() < 16


def test_infill_keeps_the_codes_outside_the_span(saved_vqvae, tmp_path, capsys):
    from vqaudio.cli import main
    from vqaudio.generate import encode_prompt
    from vqaudio.infill import span_codes
    from vqaudio.nn.diffusion_prior import DiffusionPrior, DiffusionPriorConfig

    vqvae, ckpt = saved_vqvae
    torch.manual_seed(0)
    cfg = DiffusionPriorConfig(codebook_size=16, num_speakers=2, d_model=32, n_layers=2, n_heads=2, max_len=32,
                               dropout=0.0, num_timesteps=8)
    DiffusionPrior(cfg, SPEAKERS, metadata={"checkpoint_id": vqvae.checkpoint_id}).save_pretrained(tmp_path / "dp")
    clip = RECORDINGS / "3_jackson_2.wav"  # 63 codes: longer than max_len, so infilled in a window
    original = encode_prompt(vqvae, clip)[0].numpy()
    out = tmp_path / "out.wav"
    argv = ["infill", str(clip), "--start", "0.20", "--end", "0.30", "--checkpoint", str(ckpt),
            "--prior", str(tmp_path / "dp"), "--out", str(out), "--steps", "4", "--no-progress"]
    assert main(argv) == 0
    codes = np.load(out.with_suffix(".npy"))
    first, stop = span_codes(0.20, 0.30, len(original), 8000, 64, 190)
    # 0.20 s starts code 25, 0.30 s falls in code 37; the encoder's 190-sample field adds one code each side
    assert (first, stop) == (24, 39)
    keep = np.ones(len(original), bool)
    keep[first:stop] = False
    np.testing.assert_array_equal(codes[keep], original[keep])
    assert sf.info(out).frames == len(original) * 64
    assert main(argv) == 2  # the output exists: refused without --overwrite
    assert main(argv + ["--overwrite", "--sampler", "confidence"]) == 0
    np.testing.assert_array_equal(np.load(out.with_suffix(".npy"))[keep], original[keep])
    # what is clamped is said: an end past the recording, more steps than the prior has
    capsys.readouterr()
    assert main(["infill", str(clip), "--start", "0.40", "--end", "5", "--checkpoint", str(ckpt), "--prior",
                 str(tmp_path / "dp"), "--out", str(out), "--steps", "100", "--overwrite", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "note: --end 5 s is past the end of the recording (0.50 s): infilled to its end" in err
    assert "note: --steps 100: the prior has 8 reverse steps; running all 8" in err
    ar = tmp_path / "ar"
    tiny_prior_for(vqvae).save_pretrained(ar)
    with pytest.raises(ValueError, match="needs a diffusion prior"):
        from vqaudio.infill import infill_file

        infill_file(vqvae, tiny_prior_for(vqvae), clip, tmp_path / "x.wav", 0.1, 0.2, "jackson")
    with pytest.raises(ValueError, match="--start"):
        span_codes(0.5, 0.4, 63, 8000, 64, 190)


def test_generate_writes_audio_of_the_requested_length(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    prior = tiny_prior_for(vqvae)
    out = tmp_path / "gen"
    samples = generate(vqvae, prior, "theo", 0.05, out, num=2, seed=3, progress=False)
    num_codes = round(0.05 * 8000 / 64)  # 6 codes at 125 codes/s
    assert [s.wav_path.name for s in samples] == ["theo_000.wav", "theo_001.wav"]
    for s in samples:
        wav, sr = sf.read(s.wav_path)
        codes = np.load(s.codes_path)
        assert sr == 8000 and wav.shape == (num_codes * 64,)
        assert codes.dtype == np.int64 and codes.shape == (num_codes,)
        assert codes.min() >= 0 and codes.max() < 16
    assert not list(out.glob(".*")), "temporary files left behind"

    again = generate(vqvae, prior, "theo", 0.05, out, num=2, seed=3, progress=False)
    assert again[0].wav_path.name == "theo_002.wav"  # earlier samples are kept
    for a, b in zip(again, samples):  # the same seed gives the same codes and audio
        np.testing.assert_array_equal(np.load(a.codes_path), np.load(b.codes_path))
        np.testing.assert_array_equal(sf.read(a.wav_path)[0], sf.read(b.wav_path)[0])


def test_generate_several_speakers_in_one_loop_gives_each_its_own_samples(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    prior = tiny_prior_for(vqvae)
    both = generate(vqvae, prior, ["jackson", "theo"], 0.05, tmp_path / "both", num=2, seed=3, progress=False)
    assert [(s.speaker, s.wav_path.name) for s in both] == [
        ("jackson", "jackson_000.wav"), ("jackson", "jackson_001.wav"), ("theo", "theo_000.wav"), ("theo", "theo_001.wav")]
    for method in ("numba", "torch"):  # a speaker's samples do not depend on the others, nor on the path
        alone = generate(vqvae, prior, "theo", 0.05, tmp_path / method, num=2, seed=3, method=method, progress=False)
        for a, b in zip(alone, both[2:]):
            np.testing.assert_array_equal(np.load(a.codes_path), np.load(b.codes_path))
            np.testing.assert_array_equal(sf.read(a.wav_path)[0], sf.read(b.wav_path)[0])
    with pytest.raises(ValueError, match="decode method"):
        generate(vqvae, prior, "theo", 0.05, tmp_path / "bad", method="fortran", progress=False)


def test_generate_continues_a_prompt(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    prior = tiny_prior_for(vqvae, max_len=16)  # the 0.5 s prompt is longer than the context
    prompt = RECORDINGS / "3_jackson_2.wav"
    from vqaudio.generate import encode_prompt

    prompt_codes = encode_prompt(vqvae, prompt)[0].numpy()
    (s,) = generate(vqvae, prior, "jackson", 0.05, tmp_path, prompt=prompt, seed=0, progress=False)
    codes = np.load(s.codes_path)
    assert s.prompt_codes == len(prompt_codes) > 16
    np.testing.assert_array_equal(codes[: len(prompt_codes)], prompt_codes)
    assert len(codes) == len(prompt_codes) + round(0.05 * 125)
    assert sf.info(s.wav_path).frames == len(codes) * 64


def test_unknown_speaker_and_mismatched_prior_are_clear_errors(saved_vqvae, tmp_path):
    vqvae, _ = saved_vqvae
    prior = tiny_prior_for(vqvae)
    with pytest.raises(UnknownSpeakerError, match="known speakers: jackson, theo"):
        generate(vqvae, prior, "nobody", 0.1, tmp_path, progress=False)
    prior.metadata["checkpoint_id"] = "0123456789abcdef"
    with pytest.raises(ValueError, match="0123456789abcdef"):
        generate(vqvae, prior, "theo", 0.1, tmp_path, progress=False)
    assert not list(tmp_path.iterdir())


def test_generate_cli_glue_all_speakers(saved_vqvae, tmp_path):
    vqvae, ckpt = saved_vqvae
    tiny_prior_for(vqvae).save_pretrained(tmp_path / "prior")
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    args = parser.parse_args(["--all-speakers", "--seconds", "0.05", "--checkpoint", str(ckpt),
                              "--prior", str(tmp_path / "prior"), "--out", str(tmp_path / "out"), "--top-k", "5"])
    assert run_generate(args) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "jackson_000.npy", "jackson_000.wav", "theo_000.npy", "theo_000.wav"]
    bad = parser.parse_args(["--speaker", "nobody", "--checkpoint", str(ckpt), "--prior", str(tmp_path / "prior"),
                             "--out", str(tmp_path / "out2")])
    with pytest.raises(UnknownSpeakerError):
        run_generate(bad)


def test_shared_flag_names_map_like_the_other_commands():
    from vqaudio.prior_train_cli import add_train_prior_arguments

    p = argparse.ArgumentParser()
    add_generate_arguments(p)
    args = p.parse_args(["--speaker", "a", "--checkpoint", "c", "--prior", "p", "--out", "o",
                         "--temperature", "0.5", "--prior-temperature", "0.7"])
    assert (args.decoder_temperature, args.prior_temperature) == (0.5, 0.7)  # --temperature: the decoder's
    p = argparse.ArgumentParser()
    add_train_prior_arguments(p)
    new = p.parse_args(["t", "--out", "o", "--max-steps", "5", "--learning-rate", "1e-3", "--valid-every", "2",
                        "--checkpoint-every", "3"])
    old = p.parse_args(["t", "--out", "o", "--max-steps", "5", "--lr", "1e-3", "--eval-every", "2", "--save-every", "3"])
    assert vars(new) == vars(old) and (new.max_steps, new.learning_rate, new.valid_every, new.checkpoint_every) == (5, 1e-3, 2, 3)


def test_prior_train_config_of_an_older_run_loads_under_the_shared_names():
    from vqaudio.prior_train import prior_train_config_from_dict

    old = {"steps": 7, "eval_every": 2, "save_every": 3, "keep_checkpoints": 4, "grad_clip": 0.5, "batch_size": 5}
    cfg = prior_train_config_from_dict(old)
    assert (cfg.max_steps, cfg.valid_every, cfg.checkpoint_every, cfg.keep_last, cfg.max_grad_norm, cfg.batch_size) == (
        7, 2, 3, 4, 0.5, 5)
    # the bundled priors' records (written before the rename) load too
    for name in ("fsdd-8k-prior", "fsdd-8k-diffusion"):
        saved = json.loads((Path(vqaudio.__file__).parent / "pretrained" / name / "train_config.json").read_text())
        assert prior_train_config_from_dict(saved["train_config"]).max_steps in (3000, 6000)
    with pytest.raises(ValueError, match="given twice"):
        prior_train_config_from_dict({"steps": 1, "max_steps": 2})


def test_a_prior_of_another_model_with_no_shared_speaker_is_named(saved_vqvae, tmp_path):
    """With ``--allow-mismatch``, a prior whose speakers the VQ-VAE does not know is refused
    with one line that says so, for ``--speaker`` and for ``--all-speakers`` alike."""
    vqvae, ckpt = saved_vqvae
    torch.manual_seed(1)
    cfg = PriorConfig(codebook_size=16, num_speakers=2, d_model=32, n_layers=2, n_heads=2, max_len=32, dropout=0.0)
    PriorTransformer(cfg, ["SF1", "TM1"], metadata={"checkpoint_id": "0" * 16}).save_pretrained(tmp_path / "other")
    parser = argparse.ArgumentParser()
    add_generate_arguments(parser)
    for who in (["--speaker", "SF1"], ["--all-speakers"]):
        args = parser.parse_args([*who, "--seconds", "0.1", "--checkpoint", str(ckpt), "--prior", str(tmp_path / "other"),
                                  "--allow-mismatch", "--out", str(tmp_path / "gen"), "--no-progress"])
        with pytest.raises(ValueError, match="share no speaker .prior: SF1, TM1; VQ-VAE: jackson, theo.*another model"):
            run_generate(args)
    assert not (tmp_path / "gen").exists() or not list((tmp_path / "gen").iterdir())
