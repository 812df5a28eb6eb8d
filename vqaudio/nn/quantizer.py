"""Vector quantizer with a learned codebook (van den Oord et al. 2017, Sec. 3.1-3.2, App. A.1)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vqaudio.config import QuantizerConfig


@dataclass
class QuantizerOutput:
    """Result of :meth:`VectorQuantizer.forward`.

    Attributes:
        quantized: [B, D, T'] float32, ``z_e + sg[z_q - z_e]`` (straight-through estimator:
            forward value ``z_q``, gradient passed unchanged to ``z_e``).
        codes: [B, T'] int64 in [0, K), index of the nearest code of each latent.
        loss: scalar, ``codebook_loss + commitment_cost * commitment_loss`` (Eq. 3, last two terms).
        codebook_loss: scalar, ``||sg[z_e] - e||^2`` (mean); 0 with EMA updates, which replace it.
        commitment_loss: scalar, ``||z_e - sg[e]||^2`` (mean), not yet weighted by beta.
        perplexity: scalar, ``exp(H(p))`` of the batch's code distribution (K when all codes are
            used equally, 1 when one code is used). In training under ``torch.distributed``
            the counts are all-reduced for the EMA update first, so it is that of all
            processes' batches together.
        codes_in_use: scalar int64, the number of distinct codes in the batch (all processes'
            batches in distributed training, as for ``perplexity``).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    codes_in_use: torch.Tensor


def code_entropy(counts: np.ndarray | torch.Tensor) -> float:
    """Plug-in entropy, in nats, of the code distribution with the given counts.

    ``exp`` of it is the codebook perplexity (1 .. K; Sec. 4 of the VQ-VAE paper reports it),
    and divided by ``ln 2`` it is bits per code.

    Args:
        counts: [K] non-negative counts (any numeric dtype; zeros allowed).

    Returns:
        The entropy in nats (>= 0); NaN when every count is zero.
    """
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().double().numpy()
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    total = counts.sum()
    if total <= 0:
        return math.nan
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log(p)).sum()))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantization of latents into a codebook of K codes of size D.

    Two ways to learn the codebook (``cfg.ema``):

    * EMA (default, App. A.1): ``N_i <- g N_i + (1 - g) n_i``, ``m_i <- g m_i + (1 - g) sum z_e``,
      ``e_i = m_i / N_i`` with Laplace-smoothed ``N_i``; counts and sums are all-reduced across
      processes first, so the codebook and its EMA buffers stay identical on every process.
    * Gradient: the codebook loss ``||sg[z_e] - e||^2`` trains ``codebook`` as a parameter.

    Codes whose EMA usage (expected assignments per batch) falls below
    ``cfg.dead_code_threshold`` are restarted from latents of the current batch, chosen on
    process 0 and broadcast. The codebook is initialised from the first training batch's latents.

    Args:
        cfg: quantizer config (K = ``codebook_size``, D = ``dim``, beta = ``commitment_cost``).
    """

    def __init__(self, cfg: QuantizerConfig):
        super().__init__()
        self.cfg = cfg
        K, D = cfg.codebook_size, cfg.dim
        init = torch.empty(K, D).uniform_(-1.0 / K, 1.0 / K)
        if cfg.ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_embed_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("ema_cluster_size", torch.ones(K))
        self.register_buffer("initialized", torch.tensor(False))

    @property
    def codebook_size(self) -> int:
        """K."""
        return self.cfg.codebook_size

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest code of each latent.

        Args:
            z: [B, D, T'] float latents.

        Returns:
            codes: [B, T'] int64 in [0, K).
        """
        flat = rearrange(z, "b d t -> (b t) d").float()
        codes = self._nearest(flat)
        return rearrange(codes, "(b t) -> b t", b=z.shape[0])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors of ``codes`` [B, T'] int64 -> z_q [B, D, T'] float32.

        Raises:
            ValueError: a code is outside [0, K).
        """
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got range "
                f"[{int(codes.min())}, {int(codes.max())}]"
            )
        return rearrange(F.embedding(codes, self.codebook), "b t d -> b d t")

    def _nearest(self, flat: torch.Tensor) -> torch.Tensor:
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
        e = self.codebook.float()
        dist2 = (e * e).sum(1)[None, :] - 2 * flat @ e.t()
        return dist2.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        """Quantize ``z`` [B, D, T'] float; in training mode also update the codebook (EMA)
        and restart dead codes.

        Returns:
            :class:`QuantizerOutput` (see there for shapes).
        """
        b = z.shape[0]
        flat = rearrange(z, "b d t -> (b t) d").float()
        if self.training and not bool(self.initialized):
            self._initialize(flat)
        codes = self._nearest(flat)
        onehot = F.one_hot(codes, self.codebook_size).to(flat.dtype)
        counts = onehot.sum(0)

        if self.training:
            with torch.no_grad():
                self._update(flat, onehot, counts)

        z_q = F.embedding(codes, self.codebook).float()
        commitment_loss = F.mse_loss(flat, z_q.detach())
        if self.cfg.ema:
            codebook_loss = torch.zeros((), device=z.device)
        else:
            codebook_loss = F.mse_loss(z_q, flat.detach())
        quantized = flat + (z_q - flat).detach()

        probs = counts / counts.sum().clamp(min=1)
        perplexity = torch.exp(-(probs * torch.log(probs + 1e-10)).sum())
        return QuantizerOutput(
            quantized=rearrange(quantized, "(b t) d -> b d t", b=b).to(z.dtype),
            codes=rearrange(codes, "(b t) -> b t", b=b),
            loss=codebook_loss + self.cfg.commitment_cost * commitment_loss,
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
            perplexity=perplexity.detach(),
            codes_in_use=(counts > 0).sum(),
        )

    @torch.no_grad()
    def _initialize(self, flat: torch.Tensor) -> None:
        """Codebook <- K latents drawn from the first batch (with repetition if it is smaller)."""
        idx = torch.randint(0, flat.shape[0], (self.codebook_size,), device=flat.device)
        new = flat[idx].detach().clone()
        if _distributed():
            dist.broadcast(new, src=0)
        self.codebook.data.copy_(new)
        if self.cfg.ema:
            self.ema_embed_sum.copy_(new)
        self.ema_cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    def _update(self, flat: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor) -> None:
        cfg = self.cfg
        embed_sum = onehot.t() @ flat  # [K, D]
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(embed_sum)
        self.ema_cluster_size.mul_(cfg.decay).add_(counts, alpha=1 - cfg.decay)
        if cfg.ema:
            self.ema_embed_sum.mul_(cfg.decay).add_(embed_sum, alpha=1 - cfg.decay)
            n = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + cfg.epsilon) / (n + self.codebook_size * cfg.epsilon) * n
            self.codebook.copy_(self.ema_embed_sum / smoothed[:, None])
        if cfg.dead_code_threshold > 0:
            self._restart_dead_codes(flat)

    def _restart_dead_codes(self, flat: torch.Tensor) -> None:
        dead = self.ema_cluster_size < self.cfg.dead_code_threshold
        if _distributed():  # every process must take the same branch
            flag = dead.any().to(torch.int32)
            dist.all_reduce(flag)
            any_dead = bool(flag)
        else:
            any_dead = bool(dead.any())
        if not any_dead:
            return
        n_dead = int(dead.sum())
        idx = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
        new = self.codebook.detach().clone()
        new[dead] = flat[idx].to(new.dtype)
        if _distributed():
            dist.broadcast(new, src=0)
        self.codebook.data.copy_(new)
        self.ema_cluster_size[dead] = 1.0
        if self.cfg.ema:
            self.ema_embed_sum[dead] = new[dead]
