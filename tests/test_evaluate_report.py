"""``evaluate()`` and ``vqaudio evaluate`` end to end on a few real FSDD clips with a tiny,
randomly initialised checkpoint: the report, plots, resume, clip selection, and errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import tiny_vqvae
from vqaudio.evaluate import MissingExtraError, evaluate, load_clips
from vqaudio.evaluate.optional import INSTALL_HINT, available
from vqaudio.evaluate.pipeline import codebook_statistics, conversion_pairs
from vqaudio.model import VQVAE

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "fsdd"
SPEAKERS = ["george", "jackson", "lucas", "nicolas", "theo", "yweweler"]
EXTRA = ("pesq", "pystoi", "visqol", "pycodec2", "resemblyzer", "pocketsphinx")
#: Every part that needs an optional package.
NO_EXTRA = ["pesq", "stoi", "visqol", "speaker", "asr"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_model(seed: int = 0) -> VQVAE:
    """A tiny random VQ-VAE at 8 kHz: 6 stride-2 layers (hop 64), K=32, 1 x 3 WaveNet layers."""
    return tiny_vqvae(SPEAKERS, seed, encoder_channels=(4,) * 6, codebook_size=32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model().save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def random_prior(speaker_id: int, num_codes: int, generator: torch.Generator) -> torch.Tensor:
    """A stand-in prior: uniform codes."""
    return torch.randint(0, 32, (num_codes,), generator=generator)


@pytest.mark.skipif(not all(available(m) for m in EXTRA), reason=f"needs the eval extra ({INSTALL_HINT})")
def test_full_report_on_real_clips(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    report = evaluate(
        checkpoint, SAMPLE, out, prior=random_prior, max_clips=6, baselines=("original", "codec2-1200"),
        generate_per_speaker=1, generate_seconds=0.2, join_seconds=0.8, num_plot_clips=2, batch_size=4,
        method="torch", num_threads=1, progress=False,
    )
    assert report["data"]["clips"] == 6 and report["data"]["split"] == "held-out"
    assert len(report["data"]["speakers"]) == 6
    systems = report["systems"]
    assert list(systems) == ["original", "codec2-1200", "vqaudio"]
    orig, c2, vq = systems["original"], systems["codec2-1200"], systems["vqaudio"]
    assert orig["pesq_nb"] == pytest.approx(4.549, abs=1e-2) and orig["log_mel_l1"] == 0.0
    assert orig["speaker_similarity_to_reference"] == pytest.approx(1.0, abs=1e-5)
    assert orig["digit_accuracy"] >= 0.5
    assert 1.0 < c2["pesq_nb"] < orig["pesq_nb"] and c2["bitrate"] == 1200
    assert 10 <= c2["delay_ms"] <= 40
    # a random decoder: far below the codec on every score
    assert vq["bitrate"] == pytest.approx(125 * 5) and vq["log_mel_l1"] > c2["log_mel_l1"]
    for key in ("pesq_nb", "stoi", "estoi", "mcd_db", "speaker_identification", "digit_accuracy"):
        assert key in vq
    cb = report["codebook"]
    assert 1 <= cb["codes_in_use"] <= 32 and cb["codebook_size"] == 32
    assert 1.0 <= cb["perplexity"] <= cb["codes_in_use"] + 1e-6
    # one clip per speaker: nothing to score a speaker probe on, but chance is known
    assert cb["speaker_probe"]["chance"] == pytest.approx(1 / 6) and cb["speaker_probe"]["frame_accuracy"] is None
    assert orig["clipped_share"] == 0.0 and orig["peak"] < 0.99 and -60 < orig["rms_dbfs"] < 0
    levels = report["speaker_levels_dbfs"]
    assert sorted(levels) == SPEAKERS and all(-60 < v < 0 for v in levels.values())

    conv = report["conversion"]
    assert conv["pairs"] == 6 and 0.0 <= conv["identified_as_target"] <= 1.0
    assert 0.0 <= conv["clipped_share"] <= 1.0 and 0.0 <= conv["within_6db_of_target"] <= 1.0
    assert conv["level_vs_target_db"] == pytest.approx(float(np.median(
        [20 * np.log10(np.sqrt(np.mean(sf.read(str(out / "audio" / "conversion" / f"{utt}__to__{t}.wav"))[0] ** 2)))
         - levels[t] for utt, t in conv["targets"].items()])), abs=0.05)
    for utt, target in conv["targets"].items():
        assert utt.split("_")[1] != target
    assert len(set(conv["targets"].values())) >= 3
    gen = report["generation"]
    assert gen["samples"] == 6 and 0.0 <= gen["identified_as_requested"] <= 1.0
    assert "recognised_as_digit" in gen and gen["recognised_as_digit_original"] > 0

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk["systems"]["vqaudio"]["checkpoint_id"] == VQVAE.from_pretrained(checkpoint).checkpoint_id
    assert sum(on_disk["codebook"]["histogram"]) == sum(
        len(sf.read(str(p))[0]) // 64 for p in (out / "audio" / "reconstruction").glob("*.wav"))
    md = (out / "report.md").read_text()
    assert "| vqaudio | 0.625 |" in md and "| codec2-1200 | 1.2 |" in md and "## Speaker conversion" in md
    assert "RMS dBFS" in md and "within 6 dB" in md and "Median RMS level of each speaker" in md
    for png in ("plots/spectrograms.png", "plots/codebook_usage.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
        assert png in report["plots"]
    assert len(list((out / "audio" / "conversion").glob("*.wav"))) == 6
    page = (out / "report.html").read_text()
    clips, samples = page.split("<h2>Prior samples")
    assert clips.count("<section>") == 2 and clips.count("<audio") == 2 * 4  # original, reconstruction, conversion, codec2
    assert samples.count("<audio") == 6  # the stand-in prior's sample of each speaker
    assert "conversion to " in page and "codec2-1200" in page
    assert len(list((out / "audio" / "generation").glob("*.wav"))) == 6


def test_report_without_the_extra_resumes_and_guards_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Works with no optional package installed: log-mel and MCD only; resumes from decoded audio."""
    for module in ("pesq", "pystoi", "visqol", "resemblyzer", "pocketsphinx"):
        monkeypatch.setitem(sys.modules, module, None)
    model = tiny_model()
    out = tmp_path / "r"
    kwargs = dict(max_clips=4, baselines=("original",), skip=NO_EXTRA + ["conversion"], num_plot_clips=1,
                  method="torch", num_threads=1, progress=False)
    report = evaluate(model, SAMPLE / "recordings", out, **kwargs)
    vq = report["systems"]["vqaudio"]
    assert vq["pesq_nb"] is None and vq["log_mel_l1"] > 0 and vq["mcd_db"] > 0
    wavs = sorted((out / "audio" / "reconstruction").glob("*.wav"))
    assert len(wavs) == 4
    # the listening page: one clip, its spectrogram row and a player per version, all linked files present
    page = (out / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sorted(links) == sorted(["report.md", f"listen/{Path(links[1]).stem}.png", *[
        f"listen/{Path(links[1]).stem}/{v}.wav" for v in ("original", "reconstruction")]]), links
    for link in links:
        assert (out / link).is_file(), link
    assert "report.html" in (out / "report.md").read_text()
    stamps = [p.stat().st_mtime_ns for p in wavs]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded audio should have been reused")

    monkeypatch.setattr(model, "decode", no_decoding)
    monkeypatch.setattr(model, "decode_batch", no_decoding, raising=False)
    capsys.readouterr()
    again = evaluate(model, SAMPLE / "recordings", out, **kwargs)
    assert again["systems"]["vqaudio"]["log_mel_l1"] == pytest.approx(vq["log_mel_l1"])
    assert "4 of 4 files decoded by an earlier run are read back" in capsys.readouterr().err
    assert [p.stat().st_mtime_ns for p in wavs] == stamps
    with pytest.raises(ValueError, match="--overwrite"):
        evaluate(model, SAMPLE / "recordings", out, seed=1, **kwargs)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        evaluate(None, SAMPLE / "recordings", foreign, **kwargs)
    # a missing optional package that is needed names the extra before any work is done
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[eval\]"'):
        evaluate(model, SAMPLE / "recordings", tmp_path / "x", max_clips=2, baselines=(), progress=False)
    assert not (tmp_path / "x").exists()


def test_cli_baselines_only_and_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from vqaudio.cli import main

    out = tmp_path / "base"
    rc = main(["evaluate", str(SAMPLE), "--out", str(out), "--baselines", "original", "--max-clips", "3", "--method", "torch", "--threads", "1",
               "--skip", ",".join(NO_EXTRA + ["plots"]), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| original |" in printed and "report.md" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"] is None and report["sample_rate"] == 8000
    assert report["systems"]["original"]["log_mel_l1"] == 0.0

    monkeypatch.setitem(sys.modules, "pystoi", None)
    rc = main(["evaluate", str(SAMPLE), "--out", str(tmp_path / "x"), "--baselines", "none", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs the optional package" in err and '".[eval]"' in err
    assert "pystoi" in err or not available("pesq")  # the first missing package is named


def test_clip_selection(tmp_path: Path, checkpoint: Path) -> None:
    clips, info = load_clips(SAMPLE)
    assert info["layout"] == "fsdd" and info["split"] == "held-out"
    assert all(int(c.utterance_id.split("_")[2]) < 5 for c in clips) and len(clips) == 300
    picked, _ = load_clips(SAMPLE, max_clips=13)
    per_speaker = {s: sum(c.speaker == s for c in picked) for s in SPEAKERS}
    assert len(picked) == 13 and set(per_speaker.values()) == {2, 3}
    assert len({c.text for c in picked if c.speaker == "george"}) >= 2
    files = tmp_path / "list.txt"
    files.write_text(f"# two clips\n{SAMPLE / 'recordings' / '3_theo_7.wav'}\nx/../list.txt.d/1_lucas_2.wav\n")
    (tmp_path / "list.txt.d").mkdir()
    sf.write(str(tmp_path / "list.txt.d" / "1_lucas_2.wav"), np.zeros(800, np.float32) + 0.1, 8000)
    (tmp_path / "x").mkdir()
    listed, info = load_clips(files)
    assert info["split"] == "all" and [c.speaker for c in listed] == ["lucas", "theo"]
    assert [c.text for c in listed] == ["one", "three"]
    pairs = conversion_pairs(picked, SPEAKERS)
    assert len(pairs) == 13 and all(picked[i].speaker != t for i, t in pairs)
    stats = codebook_statistics([np.array([0, 0, 1, 3])], 4)
    assert stats["codes_in_use"] == 3 and stats["codebook_usage"] == 0.75 and stats["histogram"] == [2, 1, 0, 1]
    assert stats["perplexity"] == pytest.approx(np.exp(-(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25))))


def test_unknown_speakers_are_a_clear_error(tmp_path: Path) -> None:
    model = tiny_vqvae(["p225", "p226"], encoder_channels=(4,) * 6, codebook_size=32)
    with pytest.raises(ValueError, match="no clip .* has a speaker the checkpoint knows"):
        evaluate(model, SAMPLE, tmp_path / "r", max_clips=2, baselines=(), skip=NO_EXTRA, progress=False)


def test_generation_with_a_saved_prior(tmp_path: Path) -> None:
    """``prior`` as a checkpoint path: a tiny PriorTransformer is loaded and sampled per speaker."""
    from vqaudio.nn.prior import PriorConfig, PriorTransformer

    model = tiny_model()
    torch.manual_seed(0)
    prior = PriorTransformer(PriorConfig(codebook_size=32, num_speakers=len(SPEAKERS), d_model=16, n_layers=1,
                                         n_heads=2, max_len=32, dropout=0.0), SPEAKERS)
    path = prior.save_pretrained(tmp_path / "prior")
    report = evaluate(model, SAMPLE, tmp_path / "r", prior=path, max_clips=6, baselines=(), generate_per_speaker=1,
                      generate_seconds=0.1, skip=NO_EXTRA + ["conversion", "plots"], method="torch",
                      num_threads=1, progress=False)
    assert report["generation"]["samples"] == 6
    wavs = sorted((tmp_path / "r" / "audio" / "generation").glob("*.wav"))
    assert [p.stem for p in wavs] == [f"{s}__0" for s in SPEAKERS]
    assert all(len(sf.read(str(p))[0]) == round(0.1 * 125) * 64 for p in wavs)
    # other sampling settings in the same folder: the samples are drawn again, not read back
    first = [sf.read(str(p))[0] for p in wavs]
    again = evaluate(model, SAMPLE, tmp_path / "r", prior=path, max_clips=6, baselines=(), generate_per_speaker=1,
                     generate_seconds=0.1, skip=NO_EXTRA + ["conversion", "plots"], method="torch",
                     num_threads=1, progress=False, prior_temperature=0.5, prior_top_p=0.9)
    assert again["generation"]["prior"]["temperature"] == 0.5 and again["generation"]["prior"]["top_p"] == 0.9
    assert again["generation"]["sampling_seconds_each"] > 0  # drawn by this run
    assert any(not np.array_equal(a, sf.read(str(p))[0]) for a, p in zip(first, wavs))
    assert "autoregressive, temperature 0.5, top-p 0.9" in (tmp_path / "r" / "report.md").read_text()
    # a prior fitted to another checkpoint's tokens is refused unless allowed
    prior.metadata["checkpoint_id"] = "0123456789abcdef"
    stranger = prior.save_pretrained(tmp_path / "stranger")
    with pytest.raises(ValueError, match="trained on tokens of VQ-VAE checkpoint 0123456789abcdef"):
        evaluate(model, SAMPLE, tmp_path / "r3", prior=stranger, max_clips=2, baselines=(),
                 skip=NO_EXTRA + ["conversion", "plots"], method="torch", num_threads=1, progress=False)
    other = PriorTransformer(PriorConfig(codebook_size=32, num_speakers=2, d_model=16, n_layers=1, n_heads=2,
                                         max_len=32), ["a", "b"])
    with pytest.raises(ValueError, match="speakers"):
        evaluate(model, SAMPLE, tmp_path / "r2", prior=other, max_clips=2, baselines=(),
                 skip=NO_EXTRA + ["conversion", "plots"], method="torch", num_threads=1, progress=False)
    assert not (tmp_path / "r2").exists()  # checked before any work


def test_generation_and_infilling_with_a_diffusion_prior(tmp_path: Path) -> None:
    """A saved diffusion prior: samples per speaker at --steps, timed; the listening page shows
    the clips with their middle third infilled, codes outside the span kept."""
    from vqaudio.nn.diffusion_prior import DiffusionPrior, DiffusionPriorConfig

    model = tiny_model()
    torch.manual_seed(0)
    prior = DiffusionPrior(DiffusionPriorConfig(codebook_size=32, num_speakers=len(SPEAKERS), d_model=16, n_layers=1,
                                                n_heads=2, max_len=128, dropout=0.0, num_timesteps=6), SPEAKERS)
    path = prior.save_pretrained(tmp_path / "prior")
    out = tmp_path / "r"
    report = evaluate(model, SAMPLE, out, prior=path, prior_steps=3, max_clips=6, baselines=(), generate_per_speaker=1,
                      generate_seconds=0.1, skip=NO_EXTRA + ["conversion"], num_plot_clips=2, method="torch",
                      num_threads=1, progress=False)
    gen = report["generation"]
    assert gen["samples"] == 6 and gen["prior"] == {"type": "diffusion", "path": str(path), "steps": 3,
                                                      "sampler": "posterior", "temperature": 1.0, "top_k": None,
                                                      "top_p": None}
    assert gen["sampling_seconds_each"] > 0
    assert len(gen["infilled"]["clips"]) == 2
    page = (out / "report.html").read_text()
    assert page.count("(diffusion prior)") == 2 and "infilled" in page
    assert "Prior samples" in page and (out / "listen" / "samples" / "george.wav").is_file()
    for utt, (first, stop) in zip(gen["infilled"]["clips"], gen["infilled"]["spans"]):
        assert 0 < first < stop
        assert sf.info(str(out / "audio" / "infill" / f"{utt}.wav")).frames > 0
    assert "diffusion, 3 reverse steps" in (out / "report.md").read_text()
    from vqaudio.evaluate.report import prior_sampling_text

    text = prior_sampling_text({**gen["prior"], "sampler": "confidence"})
    assert text == "diffusion, 3 reverse steps, confidence decoding"


def test_two_priors_are_compared_in_one_report(tmp_path: Path) -> None:
    from vqaudio.nn.diffusion_prior import DiffusionPrior, DiffusionPriorConfig
    from vqaudio.nn.prior import PriorConfig, PriorTransformer

    model = tiny_model()
    torch.manual_seed(0)
    sizes = dict(codebook_size=32, num_speakers=len(SPEAKERS), d_model=16, n_layers=1, n_heads=2, max_len=64, dropout=0.0)
    ar = PriorTransformer(PriorConfig(**sizes), SPEAKERS).save_pretrained(tmp_path / "ar")
    diffusion = DiffusionPrior(DiffusionPriorConfig(**sizes, num_timesteps=4), SPEAKERS).save_pretrained(tmp_path / "diff")
    report = evaluate(model, SAMPLE, tmp_path / "r", prior=[ar, diffusion], prior_steps=2, max_clips=6, baselines=(),
                      generate_per_speaker=1, generate_seconds=0.1, skip=NO_EXTRA + ["conversion"], num_plot_clips=1,
                      method="torch", num_threads=1, progress=False)
    gens = report["generations"]
    assert [g["label"] for g in gens] == ["ar", "diff"] and report["generation"] is gens[0]
    assert [(g["prior"]["type"], g["prior"]["steps"]) for g in gens] == [("autoregressive", None), ("diffusion", 2)]
    for label in ("ar", "diff"):
        assert len(list((tmp_path / "r" / "audio" / "generation" / label).glob("*.wav"))) == 6
    assert "## The priors compared (same seeds)" in (tmp_path / "r" / "report.md").read_text()
    assert "infilled" in gens[1] and "infilled" not in gens[0]  # by the diffusion prior, titled on the page
    assert "(diffusion prior)" in (tmp_path / "r" / "report.html").read_text()


def test_a_training_run_is_scored_on_the_utterances_it_held_out(tmp_path: Path) -> None:
    """A run trained with another split: evaluate takes its data.json's held-out utterances."""
    run = tmp_path / "run"
    tiny_model().save_pretrained(run / "model")
    (run / "train_config.json").write_text("{}")
    held_out = ["7_george_9", "3_theo_12"]  # training takes under FSDD's official split
    (run / "data.json").write_text(json.dumps({"valid_utterances": held_out}))
    report = evaluate(run, SAMPLE, tmp_path / "r", baselines=(), skip=NO_EXTRA + ["conversion", "plots"],
                      method="torch", num_threads=1, progress=False)
    assert report["data"]["split"] == "held-out (the run's)" and report["data"]["clips"] == 2
    assert sorted(p.stem for p in (tmp_path / "r" / "audio" / "reconstruction").glob("*.wav")) == sorted(held_out)
    (run / "data.json").write_text(json.dumps({"valid_utterances": ["not_in_the_data"]}))
    with pytest.raises(ValueError, match="holds none of the 1 utterances the run held out"):
        evaluate(run, SAMPLE, tmp_path / "r2", baselines=(), skip=NO_EXTRA, progress=False)


def test_conversion_matrix_on_the_listening_page(tmp_path: Path) -> None:
    """Two clips decoded in every voice of the checkpoint: a row each on the listening page,
    the clip's own voice labelled as its reconstruction, every linked file present."""
    out = tmp_path / "r"
    report = evaluate(tiny_model(), SAMPLE / "recordings", out, max_clips=6, baselines=(), skip=NO_EXTRA,
                      num_plot_clips=2, conversion_matrix=2, method="torch", num_threads=1, progress=False)
    matrix = report["conversion_matrix"]
    assert matrix["speakers"] == SPEAKERS and len(matrix["clips"]) == 2
    assert len({c.split("_")[1] for c in matrix["clips"]}) == 2  # one clip per speaker first
    assert len(list((out / "audio" / "matrix").glob("*.wav"))) == 2 * len(SPEAKERS)
    page = (out / "report.html").read_text()
    section = page.split("<h2>Conversion matrix</h2>")[1]
    assert section.count("<tr><th>") == 1 + 2 and section.count("<audio") == 2 * (1 + len(SPEAKERS))  # header + 2 rows
    assert section.count("<div>reconstruction</div>") == 2
    for link in re.findall(r'src="(listen/matrix/[^"]+)"', section):
        assert (out / link).is_file(), link
    # the same clip in another voice is another signal, of the clip's length
    own, other = (sf.read(str(out / "listen" / "matrix" / matrix["clips"][0] / f"as_{s}.wav"))[0]
                  for s in (matrix["clips"][0].split("_")[1], "theo" if "theo" not in matrix["clips"][0] else "george"))
    assert len(own) == len(other) and not np.array_equal(own, other)
