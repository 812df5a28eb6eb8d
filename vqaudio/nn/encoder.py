"""Strided 1-D convolutional encoder (van den Oord et al. 2017, Sec. 4.3)."""

from __future__ import annotations

import torch
from torch import nn

from vqaudio.config import EncoderConfig


class Encoder(nn.Module):
    """Waveform -> continuous latents ``z_e`` at ``1 / hop_length`` of the sample rate.

    ``len(cfg.channels)`` Conv1d layers (kernel ``cfg.kernel_size``, stride ``cfg.stride``,
    padding ``(kernel_size - stride) // 2``), each followed by ReLU, then a 1x1 projection to
    ``latent_dim``. With the defaults (6 layers, kernel 4, stride 2) the paper's audio encoder:
    64 samples per latent, widths 32 -> 256 so the layers at the sample rate stay cheap.

    Args:
        cfg: the encoder's config.
        latent_dim: D, the size of each latent (the quantizer's code size).
    """

    def __init__(self, cfg: EncoderConfig, latent_dim: int):
        super().__init__()
        self.cfg = cfg
        if (cfg.kernel_size - cfg.stride) % 2:
            raise ValueError("kernel_size - stride must be even for exact downsampling")
        padding = (cfg.kernel_size - cfg.stride) // 2
        layers: list[nn.Module] = []
        in_ch = 1
        for ch in cfg.channels:
            layers += [nn.Conv1d(in_ch, ch, cfg.kernel_size, cfg.stride, padding), nn.ReLU()]
            in_ch = ch
        self.convs = nn.Sequential(*layers)
        self.proj = nn.Conv1d(in_ch, latent_dim, 1)

    @property
    def hop_length(self) -> int:
        """Samples per latent (64 by default)."""
        return self.cfg.hop_length

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Encode.

        Args:
            wav: [B, 1, T] float32 in [-1, 1]; T must be a multiple of ``hop_length``.

        Returns:
            z_e: [B, D, T // hop_length] float32.

        Raises:
            ValueError: wrong rank/channels, or T not a multiple of ``hop_length``.
        """
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected wav of shape [B, 1, T], got {tuple(wav.shape)}")
        if wav.shape[-1] % self.hop_length:
            raise ValueError(
                f"length {wav.shape[-1]} is not a multiple of hop_length {self.hop_length}"
            )
        return self.proj(self.convs(wav))


def encoder_receptive_field(cfg: EncoderConfig) -> int:
    """Input samples that one latent depends on.

    Layer ``i`` (0-based) has kernel ``k`` and input stride ``s**i``, so it widens the field by
    ``(k - 1) * s**i`` samples: ``1 + (k - 1) * (s**L - 1) / (s - 1)``. Defaults: 1 + 3 * 63 = 190.
    """
    field, jump = 1, 1
    for _ in cfg.channels:
        field += (cfg.kernel_size - 1) * jump
        jump *= cfg.stride
    return field
