"""Autoregressive prior over VQ-VAE codes: a speaker-conditioned decoder-only Transformer.

After the VQ-VAE is trained, van den Oord et al. (2017, Sec. 3.2 and 4.3) replace its uniform
prior over the discrete latents by an autoregressive model fitted to the codes, then sample the
prior and decode the samples to generate new audio. The paper uses a PixelCNN for images and a
WaveNet for audio; later work (e.g. Jukebox, Dhariwal et al. 2020; AudioLM, Borsos et al. 2022)
uses Transformers, as this module does: a GPT-style decoder (Radford et al. 2019, pre-LayerNorm
blocks, the layout of nanoGPT) with rotary position embeddings (RoPE, Su et al. 2021).

Sequence layout, for codes ``c_0 .. c_{L-1}`` of one speaker ``s``::

    input tokens:   [START]  c_0   c_1  ...  c_{L-2}
    predicts:         c_0    c_1   c_2  ...  c_{L-1}

``START`` is token id ``codebook_size`` (one extra row of the token embedding; the output
softmax covers the ``codebook_size`` codes only). The speaker embedding is added to every
position (global conditioning, as the WaveNet decoder's speaker embedding). A training window
is at most ``max_len`` codes; it starts with ``START`` whether it is the start of an utterance
or a window cut from its middle, which is also what sampling does once the context is full
(see :meth:`PriorTransformer.sample`).

Sampling keeps an explicit key/value cache (:class:`KVCache`), so each new code costs one
position of attention per layer instead of a pass over the whole prefix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqaudio.checkpoint import CheckpointError, read_model_files, speaker_index, write_model_files

#: ``model_type`` written in a prior's ``config.json``.
PRIOR_MODEL_TYPE = "prior"

#: Target value that :meth:`PriorTransformer.loss` ignores (padding of short windows).
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TransformerConfig:
    """The Transformer that both priors share (this module's and
    :mod:`vqaudio.nn.diffusion_prior`'s); each prior's config extends it.

    Attributes:
        codebook_size: K, the number of VQ-VAE codes (the size of the output softmax).
        num_speakers: rows of the speaker embedding table (the VQ-VAE's speaker table).
        d_model: width of the residual stream.
        n_layers: Transformer blocks.
        n_heads: attention heads; ``d_model`` must be divisible by it and the head width
            ``d_model // n_heads`` must be even (rotary embeddings rotate pairs).
        max_len: the most positions the model attends over.
        dropout: dropout rate on the embeddings and residual branches (training only).
        attention_dropout: dropout rate on the attention weights (training only). 0 by
            default: above 0, PyTorch's attention runs its plain kernel, which keeps every
            T x T weight matrix for the backward pass. Measured on the CPU (the default 6 x 256
            prior, dropout 0.1, batch 16 x 1,300 codes, bf16, one thread): 11.1 GB peak and
            105 s a training step with attention dropout 0.1; 2.5 GB and 27 s with 0 (the fused
            kernel, memory linear in the window).
        mlp_ratio: hidden width of each feed-forward block, in multiples of ``d_model``.
        rope_base: base of the rotary embedding frequencies (10000 in Su et al. 2021).
    """

    codebook_size: int = 512
    num_speakers: int = 1
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    max_len: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    mlp_ratio: int = 4
    rope_base: float = 10000.0

    def __post_init__(self) -> None:
        kind = type(self).__name__
        for name in ("codebook_size", "num_speakers", "d_model", "n_layers", "n_heads", "mlp_ratio", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{kind}.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"the head width d_model // n_heads ({self.d_model // self.n_heads}) must be even")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{kind}.{name} must be in [0, 1), got {getattr(self, name)}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head: ``d_model // n_heads``."""
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class PriorConfig(TransformerConfig):
    """Configuration of :class:`PriorTransformer`, saved in every prior checkpoint: the
    :class:`TransformerConfig` fields, where

    - the input vocabulary is ``K + 1``: the codes and the start token ``K``;
    - ``max_len`` (at least 2) counts input positions, the start token included: a training
      window holds at most ``max_len`` codes, and sampling slides its context once ``max_len``
      positions are in the cache.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_len < 2:
            raise ValueError(f"PriorConfig.max_len must be >= 2, got {self.max_len}")

    @property
    def start_token(self) -> int:
        """Input id of the start token: ``codebook_size``."""
        return self.codebook_size


@dataclass
class KVCache:
    """Explicit key/value cache for incremental decoding.

    Attributes:
        keys, values: one tensor per layer, ``[B, n_heads, max_len, head_dim]`` in the model's
            dtype; positions ``0 .. length - 1`` hold the keys/values (rotary embedding already
            applied to the keys) of the tokens fed so far.
        length: number of positions filled, the start token included.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int = 0

    @classmethod
    def empty(
        cls, config: PriorConfig, batch_size: int, device: torch.device | str, dtype: torch.dtype
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences of up to ``config.max_len`` positions."""
        shape = (batch_size, config.n_heads, config.max_len, config.head_dim)
        return cls(
            keys=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            values=[torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layers)],
            length=0,
        )

    @property
    def capacity(self) -> int:
        """Positions the cache can hold (``max_len``)."""
        return self.keys[0].shape[2]


def rotary_tables(head_dim: int, max_len: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of rotary position embeddings (Su et al. 2021, Eq. 34).

    Frequencies ``theta_i = base ** (-2 i / head_dim)``, ``i = 0 .. head_dim / 2 - 1``;
    position ``p`` rotates the pair ``(x_i, x_{i + head_dim/2})`` by angle ``p * theta_i``
    (the "rotate half" layout of GPT-NeoX and LLaMA).

    Returns:
        (cos, sin): each ``[max_len, head_dim]`` float32.
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``[B, H, T, head_dim]`` by the tables ``cos``, ``sin`` ``[T, head_dim]``."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and an optional KV cache; causal, or
    bidirectional with ``causal=False`` (the diffusion prior's, :mod:`vqaudio.nn.diffusion_prior`).

    Args:
        config: the prior's :class:`TransformerConfig`.
        causal: each position attends to itself and earlier ones only.
    """

    def __init__(self, config: TransformerConfig, causal: bool = True):
        super().__init__()
        self.causal = causal
        self.n_heads = config.n_heads
        self.head_dim = config.head_dim
        self.attention_dropout = config.attention_dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start: int,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, d_model] at positions ``start .. start + T - 1`` -> [B, T, d_model].

        ``cos``/``sin`` are the rotary tables for those positions, ``[T, head_dim]``. With a
        cache ``(keys, values)`` (each ``[B, H, max_len, head_dim]``) the new keys/values are
        written at those positions and the queries attend over positions ``0 .. start + T - 1``.
        ``key_mask`` (bidirectional attention only): [B, 1, 1, T] bool, False for keys (padding)
        that no query may attend to.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.n_heads, self.head_dim).transpose(1, 2) for z in (q, k, v))
        q = apply_rotary(q, cos, sin)
        k = apply_rotary(k, cos, sin)
        if cache is not None:
            cache_k, cache_v = cache
            cache_k[:, :, start : start + t] = k
            cache_v[:, :, start : start + t] = v
            k = cache_k[:, :, : start + t]
            v = cache_v[:, :, : start + t]
        mask = None
        is_causal = False
        if not self.causal:
            mask = key_mask
        elif start == 0:
            is_causal = t > 1
        elif t > 1:
            # Queries at positions start..start+T-1 see keys 0..their own position. SDPA's
            # is_causal aligns the mask top-left, which is wrong when T_q != T_k.
            q_pos = torch.arange(start, start + t, device=x.device)[:, None]
            k_pos = torch.arange(start + t, device=x.device)[None, :]
            mask = k_pos <= q_pos
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.attention_dropout if self.training else 0.0
        )
        y = y.transpose(1, 2).reshape(b, t, d)
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``; causal
    attention unless ``causal=False`` (see :class:`CausalSelfAttention`)."""

    def __init__(self, config: TransformerConfig, causal: bool = True):
        super().__init__()
        self.ln_attn = nn.LayerNorm(config.d_model)
        self.attn = CausalSelfAttention(config, causal)
        self.ln_mlp = nn.LayerNorm(config.d_model)
        hidden = config.mlp_ratio * config.d_model
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, config.d_model, bias=False),
            nn.Dropout(config.dropout),
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        start: int,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        key_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: [B, T, d_model] -> [B, T, d_model]; see :meth:`CausalSelfAttention.forward`."""
        x = x + self.attn(self.ln_attn(x), cos, sin, start, cache, key_mask)
        return x + self.mlp(self.ln_mlp(x))


def speaker_table(speakers: list[str], num_speakers: int) -> list[str]:
    """``speakers`` as a list, checked against a config's ``num_speakers``.

    Raises:
        ValueError: another number of names, or a name twice.
    """
    speakers = list(speakers)
    if len(speakers) != num_speakers:
        raise ValueError(f"{len(speakers)} speaker names for config.num_speakers={num_speakers}")
    if len(set(speakers)) != len(speakers):
        raise ValueError(f"duplicate names in the speaker table: {speakers}")
    return speakers


def filter_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """Temperature, top-k and nucleus (top-p, Holtzman et al. 2020) filtering of logits.

    Args:
        logits: [B, K] float, unnormalised log-probabilities of the next code.
        temperature: > 0; logits are divided by it (< 1 sharpens, > 1 flattens).
        top_k: keep the ``top_k`` most likely codes (``None`` or 0: all).
        top_p: keep the smallest set of most likely codes whose probability reaches ``top_p``
            (``None`` or 1.0: all); the most likely code is always kept.

    Returns:
        [B, K] float32 logits with the removed codes at ``-inf``.

    Raises:
        ValueError: ``temperature <= 0``, ``top_k < 0`` or ``top_p`` outside (0, 1].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    logits = logits.float() / temperature
    if top_k:
        k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Remove a code when the codes strictly more likely than it already reach top_p.
        remove_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


class TransformerPrior(nn.Module):
    """What both priors share: a speaker-conditioned Transformer over codes, its speaker table,
    metadata and checkpoint files. Subclasses set :attr:`MODEL_TYPE` and :attr:`CONFIG_CLASS`
    and whether attention is :attr:`CAUSAL`.

    Parameters: a token embedding ``[K + 1, d_model]`` (the codes and one special token), a
    speaker embedding ``[num_speakers, d_model]`` added at every position, ``n_layers`` pre-LN
    blocks with rotary self-attention, a final LayerNorm and a linear head to ``K`` logits;
    GPT-2 initialisation.

    Args:
        config: the subclass's frozen config (a :class:`TransformerConfig`).
        speakers: the speaker table in id order (the VQ-VAE's); its length must equal
            ``config.num_speakers``.
        metadata: JSON-ready facts about the codes the prior was fitted to (e.g. the VQ-VAE's
            ``checkpoint_id``, ``sample_rate``, ``hop_length``, ``codes_per_second``); saved
            in ``config.json``.

    Raises:
        ValueError: the speaker table does not match ``config.num_speakers`` or has duplicates.
    """

    MODEL_TYPE = ""
    CONFIG_CLASS: type = TransformerConfig
    CAUSAL = True

    def __init__(self, config: TransformerConfig, speakers: list[str], metadata: dict[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.speakers = speaker_table(speakers, config.num_speakers)
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.token_embedding = nn.Embedding(config.codebook_size + 1, config.d_model)
        self.speaker_embedding = nn.Embedding(config.num_speakers, config.d_model)
        self.embed_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, causal=self.CAUSAL) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.codebook_size, bias=False)
        cos, sin = rotary_tables(config.head_dim, config.max_len, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layers))

    def speaker_id(self, name: str) -> int:
        """Row of ``name`` in the speaker table.

        Raises:
            vqaudio.checkpoint.UnknownSpeakerError (a KeyError): the name is not in the table;
                the message lists the known speakers.
        """
        return speaker_index(self.speakers, name)

    @property
    def num_parameters(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the checkpoint directory (:mod:`vqaudio.checkpoint`; ``config.json`` has the
        class's ``model_type`` and the model's ``metadata``); returns it."""
        return write_model_files(directory, self.MODEL_TYPE, self.config, self.state_dict(), self.speakers, self.metadata)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu"):
        """Load a prior of this class written by :meth:`save_pretrained` (in eval mode).

        Raises:
            vqaudio.checkpoint.CheckpointError: a file is missing or malformed, the checkpoint
                is of another model type, or its format version is newer than this code.
        """
        files = read_model_files(directory, cls.MODEL_TYPE, cls.CONFIG_CLASS, map_location)
        model = cls(files.config, files.speakers, metadata=files.meta.get("metadata") or {})
        try:
            model.load_state_dict(files.state)
        except RuntimeError as exc:
            raise CheckpointError(f"{directory}: the weights do not match the config ({exc})") from None
        return model.to(map_location).eval()


class PriorTransformer(TransformerPrior):
    """Speaker-conditioned autoregressive prior ``p(c_t | c_<t, speaker)`` over VQ-VAE codes.

    See the module docstring for the sequence layout. A :class:`TransformerPrior` with causal
    attention whose special token is the start token; ``model_type`` ``"prior"``.

    Args:
        config: the frozen :class:`PriorConfig`.
        speakers, metadata: see :class:`TransformerPrior`.

    Raises:
        ValueError: the speaker table does not match ``config.num_speakers`` or has duplicates.
    """

    MODEL_TYPE = PRIOR_MODEL_TYPE
    CONFIG_CLASS = PriorConfig

    def __init__(self, config: PriorConfig, speakers: list[str], metadata: dict[str, Any] | None = None):
        super().__init__(config, speakers, metadata)
        self._init_weights()

    # ------------------------------------------------------------------ forward passes
    def logits(self, tokens: torch.Tensor, speaker: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Next-code logits for every input position.

        Args:
            tokens: [B, T] int64 input ids in ``[0, K]`` (``K`` = start token), at positions
                ``cache.length .. cache.length + T - 1`` (``0 .. T - 1`` without a cache).
            speaker: [B] int64 speaker ids.
            cache: a :class:`KVCache`; the new keys/values are written into it and its
                ``length`` grows by ``T``.

        Returns:
            [B, T, K] float logits; ``[:, i]`` is the distribution of the code after ``tokens[:, i]``.

        Raises:
            ValueError: the positions would exceed ``max_len``, or the ids are out of range.
        """
        if tokens.ndim != 2 or speaker.shape != tokens.shape[:1]:
            raise ValueError(f"tokens must be [B, T] and speaker [B], got {tuple(tokens.shape)} and {tuple(speaker.shape)}")
        b, t = tokens.shape
        start = cache.length if cache is not None else 0
        if start + t > self.config.max_len:
            raise ValueError(
                f"{start + t} positions exceed max_len={self.config.max_len}; use shorter windows "
                f"(sample() slides its context automatically)"
            )
        x = self.token_embedding(tokens) + self.speaker_embedding(speaker)[:, None, :]
        x = self.embed_dropout(x)
        cos = self.rope_cos[start : start + t].to(x.dtype)
        sin = self.rope_sin[start : start + t].to(x.dtype)
        for i, block in enumerate(self.blocks):
            layer_cache = (cache.keys[i], cache.values[i]) if cache is not None else None
            x = block(x, cos, sin, start, layer_cache)
        if cache is not None:
            cache.length = start + t
        return self.head(self.ln_f(x))

    def forward(self, codes: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for a window of codes.

        Args:
            codes: [B, L] int64 codes in ``[0, K)``, ``L <= max_len``; trailing entries may be
                :data:`IGNORE_INDEX` (padding; they do not affect earlier positions).
            speaker: [B] int64 speaker ids.

        Returns:
            [B, L, K] logits; ``[:, t]`` predicts ``codes[:, t]`` from the start token and
            ``codes[:, :t]``.
        """
        start = torch.full_like(codes[:, :1], self.config.start_token)
        inputs = torch.cat([start, codes[:, :-1].clamp(min=0)], dim=1)
        return self.logits(inputs, speaker)

    def loss(self, codes: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy in nats per code (Eq. of a standard autoregressive LM).

        Args:
            codes: [B, L] int64 as in :meth:`forward`; :data:`IGNORE_INDEX` entries are skipped.
            speaker: [B] int64.

        Returns:
            a scalar float tensor, ``-mean log p(c_t | c_<t, speaker)`` over non-padding codes.
        """
        logits = self(codes, speaker)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1), ignore_index=IGNORE_INDEX)

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(
        self,
        speaker: torch.Tensor,
        num_codes: int,
        prompt: torch.Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        context_keep: int | None = None,
        return_logits: bool = False,
        progress: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Sample ``num_codes`` new codes per sequence, ancestrally, one code at a time.

        The context is the start token followed by the prompt and the codes sampled so far.
        With ``use_cache`` each step feeds only the newest code through the network, reusing
        the cached keys/values of the prefix. When the context reaches ``max_len`` positions it
        slides: it is cut to the start token plus the last ``context_keep`` codes (a window
        like the training windows cut from the middle of an utterance) and the cache is
        rebuilt in one parallel pass, so long samples cost one extra pass per
        ``max_len - context_keep`` codes. ``use_cache=False`` recomputes the same context from
        scratch at every step (for benchmarks and tests); both give the same distributions.

        Args:
            speaker: [B] int64 speaker ids, one per sequence (mixing speakers is allowed).
            num_codes: codes to sample per sequence (>= 0).
            prompt: optional [B, P] int64 codes in ``[0, K)`` to continue.
            temperature, top_k, top_p: see :func:`filter_logits`; ``temperature=0`` picks the
                most likely code at every step (greedy decoding).
            generator: a ``torch.Generator`` on the model's device, for reproducible samples.
            use_cache: keep a :class:`KVCache` (fast) or recompute the prefix every step.
            context_keep: codes kept when the context slides; default ``max_len // 2``.
            return_logits: also return the raw (unfiltered) logits that produced each code.
            progress: show a tqdm bar over the codes.

        Returns:
            codes: [B, num_codes] int64 in ``[0, K)`` (the prompt is not repeated), and with
            ``return_logits`` also logits ``[B, num_codes, K]`` float32.

        Raises:
            ValueError: bad shapes, ids out of range, or bad sampling parameters.
        """
        cfg = self.config
        device = self.token_embedding.weight.device
        speaker = torch.as_tensor(speaker, dtype=torch.long, device=device).reshape(-1)
        b = speaker.shape[0]
        if num_codes < 0:
            raise ValueError(f"num_codes must be >= 0, got {num_codes}")
        if b == 0:
            raise ValueError("speaker must hold at least one id")
        if int(speaker.min()) < 0 or int(speaker.max()) >= cfg.num_speakers:
            raise ValueError(f"speaker ids must be in [0, {cfg.num_speakers}), got {speaker.tolist()}")
        keep = cfg.max_len // 2 if context_keep is None else int(context_keep)
        if not 0 <= keep <= cfg.max_len - 1:
            raise ValueError(f"context_keep must be in [0, {cfg.max_len - 1}], got {keep}")
        if prompt is None:
            prompt = torch.zeros(b, 0, dtype=torch.long, device=device)
        prompt = torch.as_tensor(prompt, dtype=torch.long, device=device)
        if prompt.ndim != 2 or prompt.shape[0] != b:
            raise ValueError(f"prompt must be [B={b}, P], got {tuple(prompt.shape)}")
        if prompt.numel() and (int(prompt.min()) < 0 or int(prompt.max()) >= cfg.codebook_size):
            raise ValueError(f"prompt codes must be in [0, {cfg.codebook_size})")
        greedy = temperature == 0
        filter_logits(torch.zeros(1, 1), 1.0 if greedy else temperature, top_k, top_p)  # check early

        history = torch.empty(b, prompt.shape[1] + num_codes, dtype=torch.long, device=device)
        history[:, : prompt.shape[1]] = prompt
        filled = prompt.shape[1]
        all_logits = [] if return_logits else None
        was_training = self.training
        self.eval()
        try:
            # The context is START + history[:, window_start:filled].
            window_start = max(0, filled - (cfg.max_len - 1))
            cache = KVCache.empty(cfg, b, device, self.token_embedding.weight.dtype) if use_cache else None

            def context_logits() -> torch.Tensor:
                """Logits after the full context, computed in one pass (fills the cache)."""
                start = torch.full((b, 1), cfg.start_token, dtype=torch.long, device=device)
                tokens = torch.cat([start, history[:, window_start:filled]], dim=1)
                if cache is not None:
                    cache.length = 0
                return self.logits(tokens, speaker, cache)[:, -1]

            next_logits = context_logits()
            steps = range(num_codes)
            if progress:
                from tqdm.auto import tqdm

                steps = tqdm(steps, desc="sampling codes", unit="code")
            for i in steps:
                logits = next_logits.float()
                if all_logits is not None:
                    all_logits.append(logits)
                if greedy:
                    code = logits.argmax(dim=-1, keepdim=True)  # [B, 1]
                else:
                    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
                    code = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
                history[:, filled] = code[:, 0]
                filled += 1
                if i == num_codes - 1:
                    break
                if 1 + filled - window_start > cfg.max_len:  # the context is full: slide it
                    window_start = filled - keep
                    next_logits = context_logits()
                elif cache is not None:
                    next_logits = self.logits(code, speaker, cache)[:, -1]
                else:
                    next_logits = context_logits()
        finally:
            self.train(was_training)
        codes = history[:, prompt.shape[1] :]
        if all_logits is not None:
            logits_out = torch.stack(all_logits, dim=1) if all_logits else torch.zeros(b, 0, cfg.codebook_size, device=device)
            return codes, logits_out
        return codes


__all__ = [
    "Block",
    "IGNORE_INDEX",
    "KVCache",
    "PriorConfig",
    "PriorTransformer",
    "TransformerConfig",
    "TransformerPrior",
    "apply_rotary",
    "filter_logits",
    "rotary_tables",
    "speaker_table",
]
