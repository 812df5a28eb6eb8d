"""Linear prediction inside the WaveNet decoder (LPCNet, Valin & Skoglund 2019, Sec. 3).

A frame network predicts each code frame's log-mel spectrum (the decoder's mel head); from it
come the frame's linear-prediction coefficients (power spectrum -> autocorrelation ->
Levinson-Durbin), and the prediction ``p_t = sum_k a_k s_{t-k}`` from the past samples. The
WaveNet then models only the excitation ``e_t = s_t - p_t``, and generation outputs
``s_t = p_t + e_t``.

Shapes: B batch, T samples, T' frames, P the prediction order, F = n_fft / 2 + 1 bins.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: Lag window of the autocorrelation: ``exp(-0.5 (2 pi LAG_WINDOW k)^2)`` at lag k (LPCNet's,
#: a Gaussian smoothing of the spectrum by about 0.002 of the sample rate).
LAG_WINDOW = 0.002
#: White-noise correction: ``r_0 *= 1 + NOISE_FLOOR`` (a floor 40 dB under the frame's power).
NOISE_FLOOR = 1e-4


def mel_to_power_matrix(mel_basis: np.ndarray) -> np.ndarray:
    """A matrix that spreads band powers back over FFT bins: [F, bands] float32.

    ``mel_basis`` [bands, F] (librosa's Slaney filters) maps a power spectrum to band powers;
    a flat spectrum of power c gives band b the power ``c * sum_f w_bf``, so ``mel_b /
    sum_f w_bf`` is band b's mean power per bin. Each bin takes the mean powers of the bands
    that cover it, weighted by their filters there (bins that no filter covers, such as 0 Hz,
    take those of the nearest covered bin).
    """
    w = np.asarray(mel_basis, np.float64)
    band_bins = np.maximum(w.sum(1), 1e-12)  # S_b: band b's power for a flat spectrum of power 1
    cover = w.sum(0)
    covered = np.flatnonzero(cover > 0)
    m = np.zeros((w.shape[1], w.shape[0]))
    for f in range(w.shape[1]):
        src = f if cover[f] > 0 else covered[np.argmin(np.abs(covered - f))]
        m[f] = w[:, src] / cover[src] / band_bins  # P_f = sum_b (w_bf / cover_f) mel_b / S_b
    return m.astype(np.float32)


def levinson_durbin(r: torch.Tensor, order: int) -> torch.Tensor:
    """Prediction coefficients from autocorrelations (Levinson-Durbin recursion).

    Args:
        r: [..., >= order + 1] autocorrelation at lags 0..order (float; computed in float64),
            positive definite (a positive power spectrum's).
        order: P.

    Returns:
        a: [..., P] float64 with ``p_t = sum_{k=1..P} a[k-1] s_{t-k}`` the least-squares
        prediction (the solution of the Toeplitz normal equations ``R a = r[1:]``).
    """
    r = r.double()
    a = torch.zeros(*r.shape[:-1], order, dtype=torch.float64, device=r.device)
    error = r[..., 0].clone()
    for i in range(order):
        acc = r[..., i + 1] - (a[..., :i] * r[..., 1 : i + 1].flip(-1)).sum(-1)
        k = acc / error.clamp(min=1e-30)
        previous = a[..., :i].clone()
        a[..., :i] = previous - k[..., None] * previous.flip(-1)
        a[..., i] = k
        error = error * (1 - k * k)
    return a


def lpc_from_log_mel(
    log_mel: torch.Tensor,
    mel_to_power: torch.Tensor,
    order: int,
    n_fft: int,
    pre_emphasis: float = 0.0,
) -> torch.Tensor:
    """Each frame's prediction coefficients from its log-mel spectrum.

    The band powers ``exp(log_mel) - 1e-5`` (the inverse of the mel loss's ``log(mel +
    1e-5)``) are spread back over the FFT bins (:func:`mel_to_power_matrix`), multiplied by
    the pre-emphasis filter's power response ``1 + a^2 - 2 a cos w`` when there is one (the
    prediction runs on the pre-emphasised signal), turned into an autocorrelation by an
    inverse FFT, lag-windowed (:data:`LAG_WINDOW`) with a white-noise floor
    (:data:`NOISE_FLOOR`), and solved by :func:`levinson_durbin`.

    Args:
        log_mel: [B, bands, T'] float, natural-log band powers.
        mel_to_power: [F, bands] float32 (:func:`mel_to_power_matrix`), F = n_fft // 2 + 1.
        order: P.
        n_fft: the FFT size of the mel spectrogram.
        pre_emphasis: the decoder's pre-emphasis coefficient.

    Returns:
        [B, T', P] float32 prediction coefficients.
    """
    power = (log_mel.double().exp() - 1e-5).clamp(min=1e-10)  # [B, bands, T']
    spectrum = torch.einsum("fm,bmt->btf", mel_to_power.double().to(log_mel.device), power)  # [B, T', F]
    if pre_emphasis:
        w = torch.linspace(0, math.pi, spectrum.shape[-1], dtype=torch.float64, device=log_mel.device)
        spectrum = spectrum * (1 + pre_emphasis**2 - 2 * pre_emphasis * torch.cos(w))
    r = torch.fft.irfft(spectrum, n=n_fft)[..., : order + 1]  # [B, T', P + 1]
    lags = torch.arange(order + 1, dtype=torch.float64, device=log_mel.device)
    r = r * torch.exp(-0.5 * (2 * math.pi * LAG_WINDOW * lags) ** 2)
    r[..., 0] = r[..., 0] * (1 + NOISE_FLOOR)
    return levinson_durbin(r, order).float()


def predict(signal: torch.Tensor, lpc: torch.Tensor, hop_length: int) -> torch.Tensor:
    """The linear prediction of every sample from the samples before it.

    Args:
        signal: [B, T] float, the signal the WaveNet models (zeros before its start).
        lpc: [B, T', P] float coefficients of each frame (:func:`lpc_from_log_mel`), T' =
            T // hop_length; sample t uses frame ``t // hop_length``.
        hop_length: samples per frame.

    Returns:
        [B, T] float: ``p_t = sum_{k=1..P} lpc[t // hop, k-1] signal[t - k]``.
    """
    P = lpc.shape[-1]
    past = torch.nn.functional.pad(signal, (P, 0)).unfold(-1, P, 1)[:, :-1]  # [B, T, P]: s_{t-P} .. s_{t-1}
    coefficients = lpc.flip(-1).repeat_interleave(hop_length, dim=1)  # [B, T, P]: a_P .. a_1
    return (past * coefficients.to(past.dtype)).sum(-1)


def mu_law_encode64(x: float | np.ndarray | torch.Tensor, quantization_channels: int = 256):
    """:func:`vqaudio.audio.mu_law_encode` in float64: the rule every generation path applies to
    the prediction and to the generated samples, so that they agree bit for bit."""
    mu = quantization_channels - 1
    lib = torch if isinstance(x, torch.Tensor) else np
    v = lib.clip(x, -1.0, 1.0) if lib is np else x.double().clamp(-1.0, 1.0)
    y = lib.sign(v) * lib.log1p(mu * lib.abs(v)) / math.log1p(mu)
    q = lib.floor((y + 1) / 2 * mu + 0.5)
    return q.long() if lib is torch else q.astype(np.int64)


def mu_law_decode64(q, quantization_channels: int = 256):
    """:func:`vqaudio.audio.mu_law_decode` in float64 (see :func:`mu_law_encode64`)."""
    mu = quantization_channels - 1
    if isinstance(q, torch.Tensor):
        y = 2 * q.double() / mu - 1
        return torch.sign(y) * ((1 + mu) ** y.abs() - 1) / mu
    y = 2 * np.asarray(q, np.float64) / mu - 1
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu
