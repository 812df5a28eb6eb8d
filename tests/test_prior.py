"""Tests of the autoregressive prior (vqaudio/nn/prior.py): KV-cache equivalence, sampling,
checkpoints, and a loss that falls on tokens of real audio."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vqaudio.audio import load_audio
from vqaudio.checkpoint import CheckpointError, UnknownSpeakerError
from vqaudio.nn.prior import IGNORE_INDEX, KVCache, PriorConfig, PriorTransformer, filter_logits

REPO = Path(__file__).resolve().parents[1]


def tiny_prior(max_len: int = 16, num_speakers: int = 3, codebook_size: int = 32, seed: int = 0) -> PriorTransformer:
    torch.manual_seed(seed)
    cfg = PriorConfig(
        codebook_size=codebook_size, num_speakers=num_speakers, d_model=32, n_layers=2, n_heads=2,
        max_len=max_len, dropout=0.0,
    )
    return PriorTransformer(cfg, [f"spk{i}" for i in range(num_speakers)]).eval()


def fsdd_files(speaker: str, count: int) -> list[Path]:
    """Real FSDD recordings: the bundled sample if present, else ../shared/data; skip if neither."""
    for root in (REPO / "samples" / "fsdd", REPO.parent / "shared" / "data" / "fsdd" / "recordings"):
        files = sorted(root.rglob(f"*_{speaker}_*.wav")) if root.is_dir() else []
        if len(files) >= 4:
            return files[:count]
    pytest.skip("no FSDD recordings (samples/fsdd or ../shared/data/fsdd missing)")


def random_projection_codes(files: list[Path], codebook_size: int, hop: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Tokens of real audio from a random-projection quantizer (BEST-RQ, Chiu et al. 2022).

    Each hop of 64 samples (a 128-sample Hann window) -> mean-removed log power spectrum ->
    fixed random projection to 16 dims -> nearest of ``codebook_size`` random unit vectors.
    Like the codes of an untrained VQ-VAE, they follow the audio, so they have real structure.
    """
    rng = np.random.default_rng(seed)
    proj = rng.standard_normal((hop + 1, 16))
    book = rng.standard_normal((codebook_size, 16))
    book /= np.linalg.norm(book, axis=1, keepdims=True)
    seqs = []
    for f in files:
        wav = load_audio(f)
        n = len(wav) // hop - 1
        frames = np.stack([wav[i * hop : i * hop + 2 * hop] for i in range(n)]) * np.hanning(2 * hop)
        feat = np.log(np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-6)
        feat -= feat.mean(axis=1, keepdims=True)
        z = feat @ proj
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        seqs.append((z @ book.T).argmax(axis=1).astype(np.int64))
    return seqs


@pytest.mark.parametrize("prompt_len", [0, 5])
def test_cached_sampling_logits_equal_full_forward(prompt_len):
    model = tiny_prior(max_len=24)
    speaker = torch.tensor([0, 1, 2])
    prompt = torch.randint(0, 32, (3, prompt_len), generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(0)
    codes, logits = model.sample(speaker, 12, prompt=prompt, generator=gen, return_logits=True)
    assert codes.shape == (3, 12) and logits.shape == (3, 12, 32)
    full = model(torch.cat([prompt, codes], dim=1), speaker)[:, prompt_len:]
    torch.testing.assert_close(logits, full, rtol=1e-4, atol=1e-5)


def test_kv_cache_chunks_equal_full_forward():
    """Feeding a sequence in chunks of 1, 3 and 4 tokens through a cache equals one pass."""
    model = tiny_prior(max_len=16)
    tokens = torch.cat([torch.full((2, 1), 32), torch.randint(0, 32, (2, 15))], dim=1)
    speaker = torch.tensor([1, 2])
    full = model.logits(tokens, speaker)
    cache = KVCache.empty(model.config, 2, "cpu", torch.float32)
    pieces = []
    for lo, hi in [(0, 1), (1, 4), (4, 8), (8, 9), (9, 16)]:
        pieces.append(model.logits(tokens[:, lo:hi], speaker, cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-5)


def test_cached_and_uncached_sampling_agree_across_the_sliding_window():
    model = tiny_prior(max_len=8)
    speaker = torch.tensor([0, 2])
    runs = []
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(7)
        runs.append(model.sample(speaker, 30, generator=gen, use_cache=use_cache, context_keep=3, return_logits=True))
    (codes_a, logits_a), (codes_b, logits_b) = runs
    torch.testing.assert_close(logits_a, logits_b, rtol=1e-4, atol=1e-5)
    assert torch.equal(codes_a, codes_b)


def test_positions_beyond_max_len_raise_a_clear_error():
    model = tiny_prior(max_len=8)
    with pytest.raises(ValueError, match="exceed max_len=8"):
        model.logits(torch.zeros(1, 9, dtype=torch.long), torch.zeros(1, dtype=torch.long))


def test_sampling_with_a_seed_is_reproducible_and_in_range():
    model = tiny_prior()
    speaker = torch.tensor([0, 1, 2, 0])
    a = model.sample(speaker, 40, generator=torch.Generator().manual_seed(11), temperature=1.3, top_k=20, top_p=0.95)
    b = model.sample(speaker, 40, generator=torch.Generator().manual_seed(11), temperature=1.3, top_k=20, top_p=0.95)
    c = model.sample(speaker, 40, generator=torch.Generator().manual_seed(12), temperature=1.3, top_k=20, top_p=0.95)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.dtype == torch.int64 and a.shape == (4, 40)
    assert int(a.min()) >= 0 and int(a.max()) < 32


def test_top_k_one_is_greedy():
    model = tiny_prior()
    speaker = torch.tensor([1])
    codes, logits = model.sample(speaker, 10, top_k=1, generator=torch.Generator().manual_seed(0), return_logits=True)
    assert torch.equal(codes, logits.argmax(dim=-1))
    assert torch.equal(model.sample(speaker, 10, temperature=0.0), codes)  # temperature 0 is greedy too


def test_filter_logits_top_k_top_p_and_errors():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.7))  # 0.5 < 0.7 <= 0.8: two codes
    assert kept.tolist() == [[True, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, top_p=0.1))  # the most likely code always stays
    assert kept.tolist() == [[True, False, False, False]]
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError, match="temperature"):
        filter_logits(logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, top_p=1.5)


def test_trailing_padding_does_not_change_earlier_positions():
    model = tiny_prior()
    codes = torch.randint(0, 32, (1, 10))
    padded = torch.cat([codes[:, :6], torch.full((1, 4), IGNORE_INDEX)], dim=1)
    speaker = torch.tensor([0])
    torch.testing.assert_close(model(padded, speaker)[:, :6], model(codes, speaker)[:, :6])
    expected = torch.nn.functional.cross_entropy(model(codes, speaker)[0, :6], codes[0, :6])
    torch.testing.assert_close(model.loss(padded, speaker), expected)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_prior()
    model.metadata = {"checkpoint_id": "abc123", "codes_per_second": 125.0}
    model.save_pretrained(tmp_path / "prior")
    header = json.loads((tmp_path / "prior" / "config.json").read_text())
    assert header["model_type"] == "prior" and header["config"]["max_len"] == 16
    assert json.loads((tmp_path / "prior" / "speakers.json").read_text()) == ["spk0", "spk1", "spk2"]
    loaded = PriorTransformer.from_pretrained(tmp_path / "prior")
    assert loaded.config == model.config and loaded.speakers == model.speakers
    assert loaded.metadata == model.metadata
    codes, speaker = torch.randint(0, 32, (2, 9)), torch.tensor([0, 2])
    torch.testing.assert_close(loaded(codes, speaker), model(codes, speaker))
    # exactly the three files: no temporary (.NAME.tmp...) left behind
    assert sorted(p.name for p in (tmp_path / "prior").iterdir()) == ["config.json", "model.safetensors", "speakers.json"]


def test_loading_a_non_prior_or_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing: no such checkpoint directory"):
        PriorTransformer.from_pretrained(tmp_path / "missing")
    tiny_prior().save_pretrained(tmp_path / "vqvae")
    (tmp_path / "vqvae" / "config.json").write_text(json.dumps({"format_version": 1, "model_type": "vqvae", "config": {}}))
    with pytest.raises(CheckpointError, match=r"config.json: model_type is 'vqvae', expected 'prior'"):
        PriorTransformer.from_pretrained(tmp_path / "vqvae")
    tiny_prior().save_pretrained(tmp_path / "newer")
    header = json.loads((tmp_path / "newer" / "config.json").read_text())
    (tmp_path / "newer" / "config.json").write_text(json.dumps({**header, "format_version": 99}))
    with pytest.raises(CheckpointError, match="upgrade vqaudio"):
        PriorTransformer.from_pretrained(tmp_path / "newer")
    (tmp_path / "newer" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        PriorTransformer.from_pretrained(tmp_path / "newer")


def test_unknown_speaker_lists_the_known_ones():
    model = tiny_prior()
    assert model.speaker_id("spk2") == 2
    with pytest.raises(KeyError) as info:
        model.speaker_id("nobody")
    assert isinstance(info.value, UnknownSpeakerError)
    assert "spk0, spk1, spk2" in str(info.value)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        PriorConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="speaker names"):
        PriorTransformer(PriorConfig(num_speakers=2, d_model=16, n_layers=1, n_heads=2), ["only-one"])


def test_loss_falls_below_the_unigram_entropy_on_real_tokens():
    """A few dozen steps on tokens of real speech: the loss falls well below log K and below
    the unigram entropy of the tokens, i.e. the prior uses the context."""
    k = 64
    seqs = random_projection_codes(fsdd_files("jackson", 40), codebook_size=k)
    counts = np.bincount(np.concatenate(seqs), minlength=k)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())  # nats per code

    model = tiny_prior(max_len=64, num_speakers=1, codebook_size=k, seed=0)
    window = 64
    all_windows = torch.tensor(
        np.stack([np.pad(s[:window], (0, max(0, window - len(s))), constant_values=IGNORE_INDEX) for s in seqs])
    )
    speaker = torch.zeros(len(seqs), dtype=torch.long)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(model.loss(all_windows, speaker))

    before = eval_loss()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    for _ in range(50):
        batch = []
        for _ in range(16):
            s = seqs[rng.integers(len(seqs))]
            off = rng.integers(0, max(1, len(s) - window + 1))
            w = s[off : off + window]
            batch.append(np.pad(w, (0, window - len(w)), constant_values=IGNORE_INDEX))
        loss = model.loss(torch.tensor(np.stack(batch)), torch.zeros(16, dtype=torch.long))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before > math.log(k) - 0.5, before
    assert after < unigram, (after, unigram, before)
    assert after < 0.6 * before, (after, before)


def test_attention_dropout_is_its_own_setting_and_off_by_default():
    # Dropout on the attention weights makes PyTorch keep every T x T weight matrix (11 GB at
    # batch 16 x 1,300 codes), so it is a separate setting, 0 by default; residual dropout stays.
    from vqaudio.nn.prior import CausalSelfAttention

    assert PriorConfig().attention_dropout == 0.0 and PriorConfig().dropout == 0.1
    with pytest.raises(ValueError, match="attention_dropout"):
        PriorConfig(attention_dropout=1.0)
    x = torch.randn(2, 8, 32)
    cos, sin = torch.ones(8, 16), torch.zeros(8, 16)
    for attention_dropout, same in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        attn = CausalSelfAttention(PriorConfig(d_model=32, n_heads=2, dropout=0.0, attention_dropout=attention_dropout))
        y_eval = attn.eval()(x, cos, sin, 0, None)
        y_train = attn.train()(x, cos, sin, 0, None)
        assert torch.allclose(y_eval, y_train) == same
