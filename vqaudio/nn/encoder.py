"""Strided 1-D convolutional encoder (van den Oord et al. 2017, Sec. 4.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vqaudio.config import EncoderConfig

#: Arithmetic of :class:`PaddedEncoder`'s convolutions.
PRECISIONS = ("fp32", "bf16")


class Encoder(nn.Module):
    """Waveform -> continuous latents ``z_e`` at ``1 / hop_length`` of the sample rate.

    ``len(cfg.channels)`` Conv1d layers (kernel ``cfg.kernel_size``, stride ``cfg.stride``,
    padding ``(kernel_size - stride) // 2`` on both sides, or with ``cfg.causal``
    ``kernel_size - stride`` on the left only), each followed by ReLU, then a 1x1 projection to
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
        if cfg.kernel_size < cfg.stride:
            raise ValueError(f"kernel_size ({cfg.kernel_size}) must be at least the stride ({cfg.stride})")
        padding = (cfg.kernel_size - cfg.stride) // 2
        layers: list[nn.Module] = []
        in_ch = 1
        for ch in cfg.channels:
            conv = (LeftPaddedConv1d(in_ch, ch, cfg.kernel_size, cfg.stride) if cfg.causal
                    else nn.Conv1d(in_ch, ch, cfg.kernel_size, cfg.stride, padding))
            layers += [conv, nn.ReLU()]
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


class LeftPaddedConv1d(nn.Conv1d):
    """A strided Conv1d whose input is padded with ``kernel_size - stride`` zeros on the left
    only: output ``j`` sees inputs ``j * stride - (kernel_size - stride) .. j * stride + stride
    - 1``, none after its own stride. x: [B, C_in, T] -> [B, C_out, T // stride]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__(in_channels, out_channels, kernel_size, stride)
        self.left_padding = kernel_size - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(F.pad(x, (self.left_padding, 0)))


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


class PaddedEncoder:
    """A VQ-VAE's encoder and quantizer for zero-padded batches of clips of different lengths:
    what ``VQVAE.encode`` and ``vqaudio tokenize`` both run.

    The encoder's convolutions pad each layer's input with zeros; in a padded batch the
    positions past a clip's end would instead hold activations of the padding. They are set
    to zero before every convolution, so row ``b`` gets the codes of the clip
    ``wav[b:b+1, :, :lengths[b]]`` alone. For speed (about 2x the modules' own forward on CPU,
    see ``tools/bench_tokenize.py``) the convolutions run as 2-D convolutions on channels-last
    tensors (oneDNN's fastest layout on CPU), the one-channel first layer as a GEMM over
    frames, and the nearest-code search as one GEMM; the sums are those of
    ``quantizer.encode(encoder(wav))`` (the training forward pass) up to float rounding, so a
    latent within rounding (~1e-6 relative) of the boundary between two codes may get the
    other one. The weights are read when the object is made: make a new one after training.

    Args:
        encoder: the VQ-VAE's :class:`Encoder` (used, not changed).
        quantizer: its quantizer (``encode(z_e [B, D, T']) -> codes [B, T']``).
        precision: ``"fp32"``, or ``"bf16"``: bfloat16 convolutions, about twice as fast on
            CPUs with AVX512-BF16 / AMX and on GPUs (slow on CPUs without them); latents
            carry ~1e-2 relative error, so codes near a boundary may differ from fp32.

    Raises:
        ValueError: unknown precision.
    """

    def __init__(self, encoder: nn.Module, quantizer: nn.Module, precision: str = "fp32"):
        from vqaudio.nn.quantizer import VectorQuantizer

        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.encoder, self.quantizer, self.precision = encoder, quantizer, precision
        self.hop = encoder.hop_length
        self.device = next(encoder.parameters()).device
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.codebook: torch.Tensor | None = None
        if type(quantizer) is VectorQuantizer:  # squared-L2 nearest neighbour
            self.codebook = quantizer.codebook.detach().float()
            self.codebook_sq = (self.codebook * self.codebook).sum(1)
            self.codebook_t = self.codebook.t().contiguous()
        convs = getattr(encoder, "convs", None)
        self.layers: list[tuple[torch.Tensor, torch.Tensor | None, int, tuple[int, int], bool]] | None = None
        if isinstance(convs, nn.Sequential) and all(isinstance(m, (nn.Conv1d, nn.ReLU)) for m in convs) \
                and isinstance(getattr(encoder, "proj", None), nn.Conv1d):
            mods = list(convs) + [encoder.proj]
            self.layers = []
            for k, m in enumerate(mods):
                if isinstance(m, nn.Conv1d):
                    if m.dilation[0] != 1 or m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
                        self.layers = None
                        break
                    relu = k + 1 < len(mods) and isinstance(mods[k + 1], nn.ReLU)
                    w = m.weight.detach()[:, :, None, :].to(self.dtype).contiguous(memory_format=torch.channels_last)
                    bias = m.bias.detach().to(self.dtype) if m.bias is not None else None
                    left = getattr(m, "left_padding", 0)  # LeftPaddedConv1d: causal padding
                    self.layers.append((w, bias, m.stride[0], (m.padding[0] + left, m.padding[0]), relu))

    def __call__(self, wav: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
        """Encode a padded batch: row ``b`` holds one clip of ``lengths[b]`` samples.

        Args:
            wav: [B, 1, T] float32 in [-1, 1] at the model rate, zero-padded; T a multiple
                of ``hop_length``.
            lengths: B valid lengths in samples, each a positive multiple of ``hop_length``, <= T.

        Returns:
            codes: [B, T // hop_length] int64 in [0, K); entries past ``lengths[b] // hop_length``
            are meaningless.

        Raises:
            ValueError: bad shapes or lengths.
        """
        return self.encode_packed(wav, [[(0, int(n))] for n in lengths])

    @torch.inference_mode()
    def encode_packed(self, wav: torch.Tensor, segments: Sequence[Sequence[tuple[int, int]]]) -> torch.Tensor:
        """Encode rows that each hold several clips, as if every clip were encoded alone.

        Before every convolution all positions outside the clips are set to zero, which is
        what each clip alone would see there (the convolutions' zero padding); so clips can
        share a row when they are at least one hop apart. With rows of one fixed length the
        batch shape never changes: oneDNN (like cuDNN) builds and caches a kernel per input
        shape, and thousands of shapes would cost memory that grows with the corpus.

        Args:
            wav: [B, 1, T] float32 at the model rate, zeros outside the clips; T a multiple
                of ``hop_length``.
            segments: for each row, the clips ``(start, end)`` in samples: multiples of
                ``hop_length``, sorted, non-empty, at least one hop apart, within ``[0, T]``.

        Returns:
            codes: [B, T // hop_length] int64; codes ``start // hop .. end // hop`` of a row are
            those of its clip; the others are meaningless.

        Raises:
            ValueError: bad shapes or segments.
        """
        hop = self.hop
        if wav.dim() != 3 or wav.shape[1] != 1 or wav.shape[-1] % hop:
            raise ValueError(f"expected wav [B, 1, T] with T a multiple of {hop}, got {tuple(wav.shape)}")
        total = wav.shape[-1]
        if len(segments) != wav.shape[0]:
            raise ValueError(f"{len(segments)} rows of segments for a batch of {wav.shape[0]}")
        for row in segments:
            prev_end = -hop
            for a, z in row:
                if a % hop or z % hop or not (prev_end + hop <= a < z <= total):
                    raise ValueError(f"bad segments {list(row)}: need sorted multiples of {hop}, "
                                     f"non-empty, one hop apart, within [0, {total}]")
                prev_end = z
        if self.layers is None:  # an encoder of another structure: one clip at a time (exact, slower)
            codes = torch.zeros(wav.shape[0], total // hop, dtype=torch.long, device=self.device)
            for b, row in enumerate(segments):
                for a, z in row:
                    piece = wav[b : b + 1, :, a:z].to(self.device)
                    codes[b, a // hop : z // hop] = self.quantizer.encode(self.encoder(piece))[0]
            return codes
        # Stretches outside the clips, per row: zeroed before every convolution.
        gaps = []
        for b, row in enumerate(segments):
            edges = [0] + [x for seg in row for x in seg] + [total]
            gaps += [(b, edges[i], edges[i + 1]) for i in range(0, len(edges), 2) if edges[i] < edges[i + 1]]
        h = wav.to(device=self.device, dtype=self.dtype)[:, :, None, :]  # [B, 1, 1, T]
        scale = 1  # input samples per position of h
        for w, bias, stride, padding, relu in self.layers:
            for b, g0, g1 in gaps:
                h[b, :, :, g0 // scale : g1 // scale] = 0
            if w.shape[1] == 1:
                h = _conv_one_channel(h, w, bias, stride, padding)
            elif padding[0] == padding[1]:
                h = F.conv2d(h, w, bias, stride=(1, stride), padding=(0, padding[0]))
            else:
                h = F.conv2d(F.pad(h, padding), w, bias, stride=(1, stride))
            if relu:
                h = torch.relu_(h)
            scale *= stride
        z = h[:, :, 0, :].float()  # [B, D, T']
        if self.codebook is None:
            return self.quantizer.encode(z)
        # Nearest code, ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2 as VectorQuantizer computes it,
        # with the product and the sum in one GEMM (about 3x faster than separate ops).
        flat = z.transpose(1, 2).reshape(-1, z.shape[1])
        dist2 = torch.addmm(self.codebook_sq, flat, self.codebook_t, beta=1, alpha=-2)
        return dist2.argmin(dim=1).view(z.shape[0], z.shape[2])


def _conv_one_channel(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride: int,
                      padding: tuple[int, int]) -> torch.Tensor:
    """Strided conv of a one-channel signal as one GEMM over its frames (im2col).

    oneDNN's direct convolution is slow with a single input channel (the first encoder layer
    took about as long as each of the wide ones); the frames ``[B, T_out, k]`` are a cheap
    copy and one matrix product gives the output already in channels-last layout.

    Args:
        x: [B, 1, 1, T]; w: [C, 1, 1, k]; bias: [C] or None; padding: zeros (left, right).

    Returns:
        [B, C, 1, T_out] (channels-last memory), ``T_out = (T + left + right - k) // stride + 1``.
    """
    k, batch = w.shape[-1], x.shape[0]
    xp = F.pad(x.reshape(batch, -1), padding)
    t_out = (xp.shape[-1] - k) // stride + 1
    frames = xp.as_strided((batch, t_out, k), (xp.stride(0), stride, 1))
    y = torch.matmul(frames, w.reshape(w.shape[0], k).t())  # [B, T_out, C]
    if bias is not None:
        y += bias
    return y.transpose(1, 2)[:, :, None, :]
