"""Linear prediction inside the decoder (LPCNet): the envelope-to-coefficients chain, training
on the excitation, and every decoding path generating the same signal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
import torch

from conftest import tiny_vqvae
from vqaudio.audio import de_emphasis, mu_law_decode, mu_law_encode, pre_emphasis
from vqaudio.nn.lpc import (
    levinson_durbin,
    lpc_from_log_mel,
    mel_to_power_matrix,
    mu_law_decode64,
    mu_law_encode64,
    predict,
)

CLIP = Path(__file__).resolve().parents[1] / "samples" / "fsdd" / "recordings" / "7_george_3.wav"


def test_levinson_durbin_solves_the_normal_equations():
    r = np.array([1.0, 0.8, 0.5, 0.2, 0.05, -0.02, -0.04])
    a = levinson_durbin(torch.tensor(r), 6).numpy()
    np.testing.assert_allclose(a, scipy.linalg.solve_toeplitz(r[:6], r[1:7]), rtol=1e-10)
    batch = levinson_durbin(torch.tensor(np.stack([r, r * 2])), 3)  # any leading shape; scale-free
    np.testing.assert_allclose(batch[0], batch[1], rtol=1e-12)


def test_mel_to_power_spreads_a_flat_spectrum_back_flat():
    import librosa

    basis = librosa.filters.mel(sr=8000, n_fft=256, n_mels=40)
    m = mel_to_power_matrix(basis)
    assert m.shape == (129, 40)
    np.testing.assert_allclose(m @ (basis @ np.full(129, 3.0)), 3.0, rtol=1e-5)


def test_coefficients_from_the_log_mel_of_real_speech_predict_it():
    """The chain log-mel -> power -> autocorrelation -> Levinson-Durbin, fed the true log-mel
    spectrum of a spoken digit, predicts it with a gain of several dB (8.4 dB measured at order
    10, 8 kHz), and :func:`predict` equals the prediction written out sample by sample."""
    import librosa

    x = torch.from_numpy(sf.read(str(CLIP), dtype="float32")[0])
    x = x[: len(x) // 64 * 64][None]
    basis = librosa.filters.mel(sr=8000, n_fft=256, n_mels=40)
    spec = torch.stft(x, 256, 64, window=torch.hann_window(256), center=True, return_complex=True).abs() ** 2
    log_mel = torch.log(torch.from_numpy(basis) @ spec + 1e-5)[..., : x.shape[1] // 64]
    a = lpc_from_log_mel(log_mel, torch.from_numpy(mel_to_power_matrix(basis)), 10, 256)
    assert a.shape == (1, x.shape[1] // 64, 10) and a.dtype == torch.float32
    p = predict(x, a, 64)
    gain = 10 * math.log10(float((x**2).sum() / ((x - p) ** 2).sum()))
    assert gain > 6
    t = 1000
    direct = sum(float(a[0, t // 64, k - 1]) * float(x[0, t - k]) for k in range(1, 11))
    assert float(p[0, t]) == pytest.approx(direct, abs=1e-6)
    # on the pre-emphasised signal, with the emphasis applied to the envelope
    y = pre_emphasis(x, 0.85)
    gain_y = 10 * math.log10(float((y**2).sum() / ((y - predict(y, lpc_from_log_mel(
        log_mel, torch.from_numpy(mel_to_power_matrix(basis)), 10, 256, 0.85), 64)) ** 2).sum()))
    assert gain_y > 3


def test_float64_mu_law_matches_the_training_rule():
    x = torch.linspace(-1.2, 1.2, 10001)
    assert (mu_law_encode64(x) - mu_law_encode(x)).abs().max() <= 1
    assert (mu_law_encode64(x) != mu_law_encode(x)).float().mean() < 1e-3
    assert np.array_equal(mu_law_encode64(x.double().numpy()), mu_law_encode64(x).numpy())
    q = torch.arange(256)
    torch.testing.assert_close(mu_law_decode64(q).float(), mu_law_decode(q), rtol=1e-5, atol=1e-7)


def test_lpc_model_learns_the_excitation_and_every_path_generates_the_same_signal():
    """``decoder.lpc_order``: the WaveNet's targets are the mu-law values of the excitation, its
    second input the prediction's; decoding with torch and numba (the same noise) and the plain
    reference loop give the same signal, de-emphasised where the model pre-emphasises."""
    with pytest.raises(ValueError, match="lpc_order"):
        tiny_vqvae(["a"], lpc_order=4)  # needs the mel head
    model = tiny_vqvae(["a", "b"], seed=0, lpc_order=4, mel_loss_weight=1.0, mel_bands=12, pre_emphasis=0.5)
    wav = torch.sin(torch.linspace(0, 300, 2 * 640)).reshape(2, 1, 640) * 0.5
    speakers = torch.tensor([0, 1])
    seen = []
    forward = model.decoder.forward_time_major
    model.decoder.forward_time_major = lambda *a: seen.append(a) or forward(*a)
    out = model(wav, speakers)
    del model.decoder.forward_time_major
    inputs, local, _, prediction = seen[0]
    signal = pre_emphasis(wav[:, 0], 0.5)
    lpc = model.lpc_coefficients(local, speakers)
    p = predict(signal, lpc, 64).clamp(-1, 1)
    assert torch.equal(prediction, mu_law_encode(p))
    assert torch.equal(inputs[:, 1:], mu_law_encode(signal)[:, :-1])
    rec = torch.nn.functional.cross_entropy(out.logits.float(), mu_law_encode(signal - p))
    assert torch.allclose(out.reconstruction_loss, rec, atol=1e-5)
    out.loss.backward()
    assert model.decoder.embed_prediction.weight.grad.abs().sum() > 0

    codes = torch.randint(0, 16, (2, 5), generator=torch.Generator().manual_seed(1))
    noise = torch.rand(2, 5 * 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        by_torch = model.decode(codes, [0, 1], noise=noise, method="torch")
        by_numba = model.decode(codes, [0, 1], noise=noise, method="numba")
        local = model.decoder.local_features(model.quantizer.decode(codes))
        reference = model.decoder.generate(local, speakers, 1.0, noise=noise, lpc=model.lpc_coefficients(local, speakers))
    torch.testing.assert_close(by_numba, by_torch, rtol=0, atol=1e-6)
    torch.testing.assert_close(by_torch[:, 0], de_emphasis(reference, 0.5).clamp(-1, 1), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="linear prediction"):
        model.decoder.generate(local, speakers, 1.0, noise=noise)
    # the decoding lengths differ per utterance: each is generated for its own length
    short = model.decode_batch([codes[0], codes[1, :3]], [0, 1], noise=[noise[0], noise[1, : 3 * 64]], method="numba")
    torch.testing.assert_close(short[0], by_torch[0], rtol=0, atol=1e-6)
    assert short[1].shape == (1, 3 * 64)
