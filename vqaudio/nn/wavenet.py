"""WaveNet decoder with local (codes) and global (speaker) conditioning.

After van den Oord et al. 2016 ("WaveNet", Sec. 2.3-2.5) as used for the VQ-VAE's audio decoder
(van den Oord et al. 2017, Sec. 4.3). Incremental generation caches each layer's past inputs
(Paine et al. 2016, "Fast Wavenet Generation Algorithm"), so one sample costs one pass through
the layers instead of a pass over the whole receptive field.

Shapes use B batch, T samples, T' = T // hop_length code frames, R residual channels,
G gate channels, S skip channels, Q quantization channels (256).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vqaudio.config import DecoderConfig

#: mu-law value of silence; the input before the first sample.
SILENCE = 128


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left by ``(kernel_size - 1) * dilation``, so output ``t`` sees
    inputs ``<= t`` only. x: [B, C_in, T] -> [B, C_out, T]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return super().forward(F.pad(x, (self.left_padding, 0)))


class ResidualLayer(nn.Module):
    """One gated residual layer (WaveNet Eq. 3 with conditioning):

    ``a = W_d * h + V c``, ``g = tanh(a[:G/2]) * sigmoid(a[G/2:])``,
    ``h' = (h + W_r g) / sqrt(2)``, ``skip = W_s g``.

    ``V c`` is computed per code frame (``cond``) and broadcast over its ``hop_length`` samples.
    """

    def __init__(self, cfg: DecoderConfig, dilation: int, cond_channels: int):
        super().__init__()
        if cfg.gate_channels % 2:
            raise ValueError(f"gate_channels must be even, got {cfg.gate_channels}")
        self.dilation = dilation
        self.conv = CausalConv1d(cfg.residual_channels, cfg.gate_channels, cfg.kernel_size, dilation)
        self.cond = nn.Conv1d(cond_channels, cfg.gate_channels, 1, bias=False)
        self.out = nn.Conv1d(cfg.gate_channels // 2, cfg.residual_channels + cfg.skip_channels, 1)
        self.residual_channels = cfg.residual_channels


@dataclass
class WaveNetState:
    """Incremental-generation state of a :class:`WaveNet` (Paine et al. 2016).

    Attributes:
        queues: per layer, [B, R, (kernel_size - 1) * dilation] float32 ring buffers of the
            layer's past inputs; column ``t % width`` holds the input of step ``t - width``.
        cond: per layer, [B, G, T'] float32, the conditioning projected once per code frame.
        step: the number of samples generated so far.
        prev: [B] int64, the last generated mu-law sample (the next step's input).
    """

    queues: list[torch.Tensor]
    cond: list[torch.Tensor]
    step: int
    prev: torch.Tensor


class WaveNet(nn.Module):
    """WaveNet over mu-law samples: input embedding, dilated causal gated residual layers with
    skip connections, and a ReLU-1x1-ReLU-1x1 head giving logits over Q mu-law values.

    Local conditioning is the quantized latents ``z_q`` [B, D, T'] held constant over each
    frame's ``hop_length`` samples (nearest-neighbour upsampling); global conditioning is a
    learned speaker embedding. Both are concatenated per frame and projected into every layer.

    Args:
        cfg: decoder config (sizes, dilations, number of speakers).
        hop_length: samples per code frame (64).
    """

    def __init__(self, cfg: DecoderConfig, hop_length: int):
        super().__init__()
        self.cfg = cfg
        self.hop_length = hop_length
        self.embed = nn.Embedding(cfg.quantization_channels, cfg.residual_channels)
        cond_channels = cfg.local_channels + cfg.speaker_channels
        if cfg.speaker_channels > 0:
            self.speaker_embedding = nn.Embedding(cfg.num_speakers, cfg.speaker_channels)
        else:
            self.speaker_embedding = None
        self.layers = nn.ModuleList(ResidualLayer(cfg, d, cond_channels) for d in cfg.dilations)
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(cfg.skip_channels, cfg.skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(cfg.skip_channels, cfg.quantization_channels, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Samples of past input one output depends on (2047 by default)."""
        return self.cfg.receptive_field

    def conditioning(self, local: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Per-frame conditioning vector.

        Args:
            local: [B, D, T'] float32 quantized latents.
            speaker: [B] int64 speaker ids in [0, num_speakers).

        Returns:
            [B, D + speaker_channels, T'] float32.

        Raises:
            ValueError: a speaker id is out of range.
        """
        if self.speaker_embedding is None:
            return local
        if speaker.numel() and (speaker.min() < 0 or speaker.max() >= self.cfg.num_speakers):
            raise ValueError(
                f"speaker ids must lie in [0, {self.cfg.num_speakers}), got {speaker.tolist()}"
            )
        g = self.speaker_embedding(speaker)[:, :, None].expand(-1, -1, local.shape[-1])
        return torch.cat([local, g.to(local.dtype)], dim=1)

    def forward(self, inputs: torch.Tensor, local: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every sample.

        Args:
            inputs: [B, T] int64 mu-law values of the *previous* samples (``inputs[:, t]`` is
                sample ``t - 1``; :data:`SILENCE` before the first).
            local: [B, D, T'] float32, T' = T // hop_length.
            speaker: [B] int64 speaker ids.

        Returns:
            logits: [B, Q, T] float32; ``logits[:, :, t]`` predicts sample ``t``.

        Raises:
            ValueError: T != T' * hop_length.
        """
        B, T = inputs.shape
        frames = local.shape[-1]
        if T != frames * self.hop_length:
            raise ValueError(f"{T} samples do not match {frames} frames x hop {self.hop_length}")
        cond = self.conditioning(local, speaker)
        h = self.embed(inputs).transpose(1, 2)  # [B, R, T]
        skip = None
        for layer in self.layers:
            a = layer.conv(h)
            c = layer.cond(cond)  # [B, G, T'], broadcast over each frame's samples
            a = (a.view(B, -1, frames, self.hop_length) + c[..., None]).view(B, -1, T)
            g = _gate(a)
            o = layer.out(g)
            h = (h + o[:, : layer.residual_channels]) * math.sqrt(0.5)
            s = o[:, layer.residual_channels :]
            skip = s if skip is None else skip + s
        return self.head(skip)

    # ----- incremental generation -------------------------------------------------------

    def init_state(self, local: torch.Tensor, speaker: torch.Tensor) -> WaveNetState:
        """Empty incremental state for generating ``local.shape[-1] * hop_length`` samples.

        Args:
            local: [B, D, T'] float32; speaker: [B] int64.
        """
        B = local.shape[0]
        cond = self.conditioning(local, speaker)
        R, k = self.cfg.residual_channels, self.cfg.kernel_size
        dev, dt = local.device, local.dtype
        # Before the first sample every layer's input is that of a silent history: the
        # teacher-forced pass left-pads with zeros, so the queues start at zero too.
        queues = [torch.zeros(B, R, (k - 1) * layer.dilation, device=dev, dtype=dt) for layer in self.layers]
        conds = [layer.cond(cond) for layer in self.layers]
        prev = torch.full((B,), SILENCE, dtype=torch.long, device=dev)
        return WaveNetState(queues=queues, cond=conds, step=0, prev=prev)

    def step(self, state: WaveNetState) -> torch.Tensor:
        """Logits of the next sample from the cached state; advances ``state.step``.

        The caller stores the chosen sample in ``state.prev`` before the next call.

        Returns:
            logits: [B, Q] float32, equal (to float tolerance) to ``forward``'s logits at
            position ``state.step`` given the same previous samples.
        """
        t = state.step
        frame = t // self.hop_length
        k = self.cfg.kernel_size
        h = self.embed(state.prev)  # [B, R]
        skip = None
        for layer, queue, cond in zip(self.layers, state.queues, state.cond):
            w = layer.conv.weight  # [G, R, k]; tap k-1 sees the current input
            a = F.linear(h, w[:, :, k - 1], layer.conv.bias) + cond[:, :, frame]
            width = queue.shape[-1]
            for j in range(1, k):  # tap k-1-j sees the input j * dilation steps back
                col = (t - j * layer.dilation) % width
                a = a + queue[:, :, col] @ w[:, :, k - 1 - j].t()
            queue[:, :, t % width] = h
            o = F.linear(_gate(a), layer.out.weight[:, :, 0], layer.out.bias)
            h = (h + o[:, : layer.residual_channels]) * math.sqrt(0.5)
            s = o[:, layer.residual_channels :]
            skip = s if skip is None else skip + s
        state.step = t + 1
        return self.head(skip[:, :, None])[:, :, 0]

    @torch.no_grad()
    def generate(
        self,
        local: torch.Tensor,
        speaker: torch.Tensor,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        progress: bool = False,
    ) -> torch.Tensor:
        """Sample mu-law values one at a time with cached per-layer state (torch path).

        Args:
            local: [B, D, T'] float32 quantized latents; speaker: [B] int64.
            temperature: softmax temperature; 0 picks the most likely value.
            generator: random generator for the sampling noise.
            noise: optional [B, T] float32 uniform(0, 1) noise to sample with (inverse CDF),
                so that other implementations can be checked against this one.
            progress: show a tqdm progress bar.

        Returns:
            [B, T' * hop_length] int64 mu-law values in [0, Q).
        """
        B, _, frames = local.shape
        T = frames * self.hop_length
        if noise is None:
            noise = torch.rand(B, T, generator=generator, device=local.device)
        state = self.init_state(local, speaker)
        out = torch.empty(B, T, dtype=torch.long, device=local.device)
        steps = range(T)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="decode", unit="sample", unit_scale=True, leave=False)
        for t in steps:
            logits = self.step(state)
            state.prev = sample_from_logits(logits, noise[:, t], temperature)
            out[:, t] = state.prev
        return out


def _gate(a: torch.Tensor) -> torch.Tensor:
    """Gated activation ``tanh(a[:, :G/2]) * sigmoid(a[:, G/2:])`` over dim 1."""
    x, y = a.chunk(2, dim=1)
    return torch.tanh(x) * torch.sigmoid(y)


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Draw one value per row from ``softmax(logits / temperature)`` by inverse CDF.

    Args:
        logits: [B, Q] float32.
        u: [B] float32 uniform(0, 1) noise.
        temperature: > 0 scales the logits; 0 returns the argmax.

    Returns:
        [B] int64 in [0, Q): the first index whose cumulative probability exceeds ``u``.
    """
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None].contiguous())[:, 0]
    return idx.clamp_(max=logits.shape[-1] - 1)
