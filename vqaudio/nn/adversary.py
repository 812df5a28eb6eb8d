"""A speaker adversary behind a gradient-reversal layer (Ganin & Lempitsky 2015, "Unsupervised
Domain Adaptation by Backpropagation", Sec. 3.2), to keep the speaker out of the codes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient times ``-scale`` backward (Ganin & Lempitsky, Eq. 9)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return -ctx.scale * grad, None


def gradient_reversal(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` unchanged; in the backward pass its gradient is multiplied by ``-scale``.

    Args:
        x: any tensor; scale: ``W >= 0``.
    """
    return _GradientReversal.apply(x, scale)


class SpeakerAdversary(nn.Module):
    """A per-frame speaker classifier on the encoder output, trained through a gradient
    reversal: the classifier minimises its cross-entropy, while the encoder receives ``-weight``
    times that gradient and so learns latents from which the speaker cannot be told.

    Args:
        dim: D, the width of the encoder output.
        num_speakers: classes.
        weight: ``W``, the gradient-reversal scale.
        hidden: width of the classifier's hidden layer.
    """

    def __init__(self, dim: int, num_speakers: int, weight: float, hidden: int = 128):
        super().__init__()
        self.weight = weight
        self.classifier = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, num_speakers))

    def forward(self, z_e: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and accuracy of the per-frame speaker prediction.

        Args:
            z_e: [B, D, T'] float encoder output (before quantization).
            speaker: [B] int64 speaker ids.

        Returns:
            ``(loss, accuracy)``: 0-dim float32 tensors; the loss is the mean cross-entropy
            (nats) over all B x T' frames, and its gradient reaches ``z_e`` reversed and scaled
            by ``weight``; the accuracy is the share of frames whose argmax is the speaker.
        """
        x = gradient_reversal(z_e, self.weight).transpose(1, 2)  # [B, T', D]
        logits = self.classifier(x).float()  # [B, T', S]
        target = speaker[:, None].expand(-1, logits.shape[1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        accuracy = (logits.argmax(-1) == target).float().mean()
        return loss, accuracy.detach()
