"""The VQ-VAE for audio: encoder -> vector quantizer -> WaveNet decoder (van den Oord et al. 2017).

Checkpoints are directories written by :meth:`VQVAE.save_pretrained` in the format of
:mod:`vqaudio.checkpoint` (``config.json`` with ``"model_type": "vqvae"``, ``model.safetensors``
with the weights and quantizer buffers, ``speakers.json``).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqaudio._files import file_sha256  # noqa: F401  (part of this module's API)
from vqaudio.audio import de_emphasis, mu_law_decode, mu_law_encode, pre_emphasis
from vqaudio.checkpoint import (  # the errors are part of this module's API too
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    UnknownSpeakerError,
    read_model_files,
    speaker_index,
    weights_id,
    write_model_files,
)
from vqaudio.config import DECODE_METHODS, VQVAEConfig
from vqaudio.nn.adversary import SpeakerAdversary
from vqaudio.nn.encoder import Encoder, PaddedEncoder
from vqaudio.nn.lpc import lpc_from_log_mel, mel_to_power_matrix, predict
from vqaudio.nn.quantizer import QuantizerOutput, VectorQuantizer
from vqaudio.nn.wavenet import SILENCE, WaveNet

#: Folder of checkpoints shipped inside the package, loadable by name (``"fsdd-8k"``).
PRETRAINED_DIR = Path(__file__).parent / "pretrained"


@dataclass
class VQVAEOutput:
    """Result of :meth:`VQVAE.forward` (all scalars are 0-dim tensors).

    Attributes:
        loss: reconstruction_loss + quantizer loss (Eq. 3).
        reconstruction_loss: cross-entropy of the next mu-law sample, in nats per sample.
        codebook_loss: ``||sg[z_e] - e||^2`` (0 with EMA codebook updates).
        commitment_loss: ``||z_e - sg[e]||^2``, before the beta weight.
        perplexity: of the batch's code distribution.
        codes_in_use: distinct codes in the batch.
        codes: [B, T // hop_length] int64.
        logits: [B, Q, T] decoder logits (float32; bf16 under bf16 autocast), a transposed
            view of the time-major [B, T, Q] result.
        mel_loss: the auxiliary log-mel L1 loss (``decoder.mel_loss_weight``; 0 without it),
            before its weight; ``loss`` includes it weighted.
        speaker_adversary_loss: the speaker adversary's cross-entropy (nats per frame;
            ``decoder.speaker_adversary``; None without it); ``loss`` includes it unweighted
            (the weight scales the reversed gradient the encoder receives).
        speaker_adversary_acc: the share of frames whose speaker the adversary told right
            (None without it).
    """

    loss: torch.Tensor
    reconstruction_loss: torch.Tensor
    codebook_loss: torch.Tensor
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor
    codes_in_use: torch.Tensor
    codes: torch.Tensor
    logits: torch.Tensor
    mel_loss: torch.Tensor | None = None
    speaker_adversary_loss: torch.Tensor | None = None
    speaker_adversary_acc: torch.Tensor | None = None


class VQVAE(nn.Module):
    """VQ-VAE with a WaveNet decoder and a speaker embedding (van den Oord et al. 2017, Sec. 4.3).

    Decoding one speaker's codes with another speaker's id converts the voice.

    Args:
        config: the model's frozen config; ``config.decoder.num_speakers`` must equal
            ``len(speakers)``.
        speakers: the speaker table, names in id order.

    Raises:
        ValueError: the speaker table does not match the config, or holds duplicates.
    """

    def __init__(self, config: VQVAEConfig, speakers: list[str]):
        super().__init__()
        speakers = list(speakers)
        if len(speakers) != config.decoder.num_speakers:
            raise ValueError(
                f"{len(speakers)} speakers given, config.decoder.num_speakers is "
                f"{config.decoder.num_speakers}"
            )
        if len(set(speakers)) != len(speakers):
            raise ValueError("speaker names must be unique")
        self.config = config
        self.speakers = speakers
        self.encoder = Encoder(config.encoder, config.quantizer.dim)
        self.quantizer = VectorQuantizer(config.quantizer)
        self.decoder = WaveNet(config.decoder, config.hop_length)
        d = config.decoder
        self.speaker_adversary = (SpeakerAdversary(config.quantizer.dim, d.num_speakers, d.speaker_adversary)
                                  if d.speaker_adversary > 0 else None)
        self._checkpoint_id: str | None = None

    # ----- properties ---------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Model rate in Hz."""
        return self.config.sample_rate

    @property
    def hop_length(self) -> int:
        """Samples per code: ``config.hop_length`` (64 with the default encoder)."""
        return self.config.hop_length

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return self.quantizer.codebook.device

    @property
    def checkpoint_id(self) -> str:
        """The weights' id, which names what made a set of tokens: the first 16 hex digits of
        the SHA-256 of their ``model.safetensors`` file (:func:`vqaudio.checkpoint.weights_id`),
        the same for a model in memory, the file it is saved to, and the model loaded from it."""
        if self._checkpoint_id is None:
            self._checkpoint_id = weights_id(self.state_dict())
        return self._checkpoint_id

    def speaker_id(self, name: str) -> int:
        """Id of speaker ``name``.

        Raises:
            UnknownSpeakerError: ``name`` is not in the table (the message lists the known ones).
        """
        return speaker_index(self.speakers, name)

    # ----- training -----------------------------------------------------------------

    def forward(self, wav: torch.Tensor, speaker: torch.Tensor) -> VQVAEOutput:
        """Teacher-forced training pass.

        Args:
            wav: [B, 1, T] float32 in [-1, 1] at ``sample_rate`` Hz; T a multiple of ``hop_length`` (64 by default).
            speaker: [B] int64 speaker ids.

        Returns:
            :class:`VQVAEOutput`; ``loss`` is Eq. 3 of the paper with the decoder's
            cross-entropy over mu-law values as the reconstruction term (plus, with
            ``decoder.mel_loss_weight``, the weighted auxiliary log-mel loss). In training mode
            with ``encoder.gain_jitter_db`` the encoder sees ``wav`` through :func:`gain_jitter`,
            with ``decoder.time_jitter`` the decoder sees the codes through :func:`time_jitter`,
            and with ``decoder.input_noise`` its teacher-forced input is encoded from
            ``wav + N(0, input_noise^2)`` clamped to [-1, 1] (the target stays clean). With
            ``decoder.pre_emphasis`` the WaveNet's targets and inputs are the mu-law values of
            the pre-emphasised ``wav`` (:func:`vqaudio.audio.pre_emphasis`); with
            ``decoder.lpc_order`` the targets are the excitation ``s_t - p_t`` and the
            prediction ``p_t`` (:func:`vqaudio.nn.lpc.predict` from the true past, with the
            coefficients of :meth:`lpc_coefficients`) is a second input; and with
            ``decoder.speaker_adversary`` the adversary's cross-entropy on ``z_e`` is added.
        """
        self._checkpoint_id = None  # weights are about to change
        jitter = self.config.encoder.gain_jitter_db
        z_e = self.encoder(gain_jitter(wav, jitter) if self.training and jitter > 0 else wav)
        q: QuantizerOutput = self.quantizer(z_e)
        z_q = q.quantized
        if self.training and self.config.decoder.time_jitter > 0:
            z_q = time_jitter(z_q, self.config.decoder.time_jitter)
        local = self.decoder.local_features(z_q)
        d = self.config.decoder
        Q = d.quantization_channels
        predicted = None  # the mel head's log-mel spectrum [B, bands, T']
        if self.decoder.mel_head is not None:
            predicted = self.decoder.mel_head(self.decoder.conditioning(local, speaker)).float()
        signal = pre_emphasis(wav[:, 0], d.pre_emphasis).clamp(-1, 1)  # what the WaveNet models
        target = mu_law_encode(signal, Q)
        prediction = None
        if d.lpc_order > 0:
            p = predict(signal.float(), self._lpc_from_log_mel(predicted.detach()), self.hop_length).clamp(-1, 1)
            prediction = mu_law_encode(p, Q)
            target = mu_law_encode(signal - p, Q)  # the excitation
        past = mu_law_encode(signal, Q)
        if self.training and d.input_noise > 0:
            noisy = (wav[:, 0] + d.input_noise * torch.randn_like(wav[:, 0])).clamp(-1, 1)
            past = mu_law_encode(pre_emphasis(noisy, d.pre_emphasis), Q)
        inputs = torch.nn.functional.pad(past[:, :-1], (1, 0), value=SILENCE)
        logits = self.decoder.forward_time_major(inputs, local, speaker, prediction)  # [B, T, Q]
        rec = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
        loss = rec + q.loss
        mel_loss = None
        if predicted is not None:
            mel_loss = (predicted - self.log_mel(wav, frames=predicted.shape[-1])).abs().mean()
            loss = loss + self.config.decoder.mel_loss_weight * mel_loss
        adversary_loss = adversary_acc = None
        if self.speaker_adversary is not None:
            adversary_loss, adversary_acc = self.speaker_adversary(z_e, speaker)
            loss = loss + adversary_loss
        return VQVAEOutput(
            loss=loss,
            reconstruction_loss=rec,
            codebook_loss=q.codebook_loss,
            commitment_loss=q.commitment_loss,
            perplexity=q.perplexity,
            codes_in_use=q.codes_in_use,
            codes=q.codes,
            logits=logits.transpose(1, 2),
            mel_loss=mel_loss,
            speaker_adversary_loss=adversary_loss,
            speaker_adversary_acc=adversary_acc,
        )

    def log_mel(self, wav: torch.Tensor, frames: int | None = None) -> torch.Tensor:
        """The target of the auxiliary mel loss: log(mel + 1e-5) of ``wav``, one frame per code.

        Hann window of 4 hops, hop ``hop_length`` (frame k centred on sample ``k * hop_length``),
        power spectrum, ``decoder.mel_bands`` Slaney mel bands from 0 Hz to Nyquist (librosa).

        Args:
            wav: [B, 1, T] float32 in [-1, 1].
            frames: frames kept (default ``T // hop_length``).

        Returns:
            [B, mel_bands, frames] float32.
        """
        hop = self.hop_length
        n_fft = 4 * hop
        key = (str(wav.device), n_fft, self.config.decoder.mel_bands)
        if getattr(self, "_mel_basis_key", None) != key:
            import librosa

            basis = librosa.filters.mel(sr=self.sample_rate, n_fft=n_fft, n_mels=self.config.decoder.mel_bands)
            self._mel_basis = torch.from_numpy(basis).to(wav.device)
            self._mel_window = torch.hann_window(n_fft, device=wav.device)
            self._mel_basis_key = key
        x = wav[:, 0].float()
        spec = torch.stft(x, n_fft, hop_length=hop, window=self._mel_window, center=True, return_complex=True)
        mel = self._mel_basis @ spec.abs().pow(2)  # [B, bands, T // hop + 1]
        return torch.log(mel[..., : (x.shape[-1] // hop if frames is None else frames)] + 1e-5)

    def lpc_coefficients(self, local: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Each frame's linear-prediction coefficients (``decoder.lpc_order`` P > 0): from the mel
        head's log-mel spectrum of the frame's conditioning (code features and speaker), by
        :func:`vqaudio.nn.lpc.lpc_from_log_mel`.

        Args:
            local: [B, D, T'] float32, the decoder's local features
                (``decoder.local_features(z_q)``); speaker: [B] int64.

        Returns:
            [B, T', P] float32.

        Raises:
            ValueError: the decoder has no linear prediction.
        """
        if self.config.decoder.lpc_order == 0:
            raise ValueError("this decoder has no linear prediction (lpc_order 0)")
        predicted = self.decoder.mel_head(self.decoder.conditioning(local, speaker)).float()
        return self._lpc_from_log_mel(predicted)

    def _lpc_from_log_mel(self, log_mel: torch.Tensor) -> torch.Tensor:
        n_fft = 4 * self.hop_length  # as log_mel's
        key = (str(log_mel.device), n_fft, self.config.decoder.mel_bands)
        if getattr(self, "_mel_power_key", None) != key:
            import librosa

            basis = librosa.filters.mel(sr=self.sample_rate, n_fft=n_fft, n_mels=self.config.decoder.mel_bands)
            self._mel_power = torch.from_numpy(mel_to_power_matrix(basis)).to(log_mel.device)
            self._mel_power_key = key
        d = self.config.decoder
        return lpc_from_log_mel(log_mel, self._mel_power, d.lpc_order, n_fft, d.pre_emphasis)

    # ----- inference ----------------------------------------------------------------

    @torch.no_grad()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """Waveform -> codes, by :class:`vqaudio.nn.encoder.PaddedEncoder` (what ``vqaudio
        tokenize`` runs too, so both give the same codes): the encoder and the nearest-code
        search of the training forward pass, laid out for speed (equal up to float rounding).

        Args:
            wav: [B, 1, T] float32 in [-1, 1] at ``sample_rate`` Hz. Trailing samples beyond
                the last whole hop are dropped.

        Returns:
            codes: [B, T // hop_length] int64 in [0, K).

        Raises:
            ValueError: wav is not [B, 1, T], or shorter than one hop.
        """
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"expected wav of shape [B, 1, T], got {tuple(wav.shape)}")
        n = wav.shape[-1] // self.hop_length
        if n == 0:
            raise ValueError(f"audio of {wav.shape[-1]} samples is shorter than one hop ({self.hop_length})")
        wav = wav[..., : n * self.hop_length].to(self.device)
        return PaddedEncoder(self.encoder, self.quantizer)(wav, [n * self.hop_length] * wav.shape[0])

    @torch.no_grad()
    def decode(
        self,
        codes: torch.Tensor,
        speaker: torch.Tensor | int | str | list,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        method: str = "auto",
        progress: bool = False,
        noise: torch.Tensor | None = None,
        num_threads: int | None = None,
    ) -> torch.Tensor:
        """Codes -> waveform, generated sample by sample by the WaveNet decoder.

        Every method implements the same cached incremental generation (Paine et al. 2016)
        and draws each sample by inverse CDF from one uniform number, so the same noise (the
        same ``generator`` seed) gives the same audio whichever method runs it.

        Args:
            codes: [B, T'] (or [T']) int64 in [0, K).
            speaker: [B] int64 ids, or one id / name for all, or a list of ids / names.
            temperature: sampling temperature (1 samples the model's distribution; 0 is greedy;
                default ``config.decoder.temperature``, the checkpoint's).
            generator: random generator for reproducible sampling; the noise is drawn on its
                device as ``torch.rand(B, T' * hop_length)``.
            method: one of :data:`vqaudio.config.DECODE_METHODS`: ``"auto"`` (the fastest available:
                ``"cuda"`` when the model is on a CUDA device, else ``"numba"``, else
                ``"torch"``), ``"numba"`` (compiled CPU loop, streams in parallel on
                ``num_threads`` threads), ``"torch"`` (PyTorch on the model's device, one
                operator dispatch at a time: :meth:`WaveNet.generate_static` run eagerly),
                ``"cuda"`` (the same steps replayed from CUDA graphs).
            progress: show a progress bar.
            noise: [B, T' * hop_length] float32 uniform(0, 1) sampling noise instead of ``generator``.
            num_threads: threads of the ``"numba"`` method (default: all cores, at most B).

        Returns:
            wav: [B, 1, T' * hop_length] float32 in [-1, 1] at ``sample_rate`` Hz, on the model's device.

        Raises:
            UnknownSpeakerError: a speaker name is not in the table.
            ValueError: codes out of range or not [B, T'], a bad temperature, noise of the
                wrong shape, or an unknown or unavailable ``method``.
        """
        if not isinstance(codes, torch.Tensor):
            codes = torch.as_tensor(codes)
        if codes.dim() == 1:
            codes = codes[None]
        if codes.dim() != 2:
            raise ValueError(f"expected codes of shape [B, T'], got {tuple(codes.shape)}")
        B, frames = codes.shape
        if noise is not None:
            noise = torch.as_tensor(noise)
            if noise.dim() == 1:
                noise = noise[None]
            if tuple(noise.shape) != (B, frames * self.hop_length):
                raise ValueError(f"noise must be [{B}, {frames * self.hop_length}], got {tuple(noise.shape)}")
        elif B:
            noise = _draw_noise(B, frames * self.hop_length, generator)
        wavs = self.decode_batch(
            list(codes), speaker, temperature=temperature, method=method, progress=progress,
            noise=None if noise is None else list(noise), num_threads=num_threads,
        )
        if not wavs:
            return torch.zeros(0, 1, frames * self.hop_length, device=self.device)
        return torch.stack(wavs)

    @torch.no_grad()
    def decode_batch(
        self,
        codes: Sequence[torch.Tensor | np.ndarray],
        speaker: torch.Tensor | int | str | list,
        temperature: float | None = None,
        generator: torch.Generator | None = None,
        method: str = "auto",
        progress: bool = False,
        noise: Sequence[torch.Tensor] | None = None,
        num_threads: int | None = None,
    ) -> list[torch.Tensor]:
        """Decode several utterances in one generation loop, each with its own length and speaker.

        The ``"numba"`` method runs each utterance only for its own length (threads share the
        utterances by total length); the torch methods pad the shorter ones at the end and cut
        the padding off (the WaveNet is causal, so padding changes no sample of a clip).

        Args:
            codes: B sequences [T'_b] int64 in [0, K).
            speaker: [B] ids, a list of ids / names, or one id / name for all.
            temperature, generator, method, progress, num_threads: as in :meth:`decode`.
            noise: B tensors [T'_b * hop_length] float32 uniform(0, 1); by default drawn from
                ``generator`` stream after stream (``torch.rand(T'_b * hop_length)`` each), which is
                the noise :meth:`decode` uses for a [B, T'] batch of equal lengths.

        Returns:
            B tensors [1, T'_b * hop_length] float32 in [-1, 1] at ``sample_rate`` Hz, on the model's
            device: the mu-law values decoded (with ``decoder.lpc_order``: the generated
            signal ``s_t = p_t + e_t``), and with ``decoder.pre_emphasis`` de-emphasised
            (:func:`vqaudio.audio.de_emphasis`) and clipped to [-1, 1].

        Raises:
            UnknownSpeakerError, ValueError: as :meth:`decode`.
        """
        temperature = self.decode_temperature(temperature)
        method = self.resolve_decode_method(method)
        codes = [torch.as_tensor(c) for c in codes]
        for b, c in enumerate(codes):
            if c.dim() != 1:
                raise ValueError(f"utterance {b}: expected codes of shape [T'], got {tuple(c.shape)}")
        codes = [c.long() for c in codes]
        B = len(codes)
        if B == 0:
            return []
        speakers = self.speaker_tensor(speaker, B)
        hop = self.hop_length
        lengths = [int(c.shape[0]) * hop for c in codes]
        if noise is None:
            noise = [_draw_noise(1, n, generator)[0] for n in lengths]
        else:
            noise = [torch.as_tensor(u, dtype=torch.float32).reshape(-1) for u in noise]
            if len(noise) != B or any(u.shape[0] != n for u, n in zip(noise, lengths)):
                raise ValueError(f"noise must be {B} tensors of {lengths} samples, got {[tuple(u.shape) for u in noise]}")
        local = [self.decoder.local_features(self.quantizer.decode(c[None].to(self.device)))[0]
                 for c in codes]  # [D, T'_b]
        Q = self.config.decoder.quantization_channels
        lpc = None  # with linear prediction: [T'_b, P] coefficients per utterance
        if self.config.decoder.lpc_order > 0:
            lpc = [self.lpc_coefficients(x[None], speakers[b : b + 1])[0] for b, x in enumerate(local)]
        if method == "numba":
            from vqaudio.nn.fast_wavenet import FastWaveNet

            fast = FastWaveNet(self.decoder)
            samples, _ = fast.generate(
                local, speakers.cpu(), noise, temperature=temperature, num_threads=num_threads, progress=progress,
                lpc=lpc,
            )
            q = [torch.from_numpy(x) for x in samples]
        else:
            frames = max(x.shape[1] for x in local)
            padded = torch.zeros(B, local[0].shape[0], frames, device=self.device)
            u = torch.zeros(B, frames * hop, device=self.device)
            for b in range(B):
                padded[b, :, : local[b].shape[1]] = local[b]
                u[b, : lengths[b]] = noise[b].to(self.device)
            padded_lpc = None
            if lpc is not None:
                padded_lpc = torch.zeros(B, frames, self.config.decoder.lpc_order, device=self.device)
                for b in range(B):
                    padded_lpc[b, : lpc[b].shape[0]] = lpc[b]
            out = self.decoder.generate_static(
                padded, speakers, temperature, noise=u, progress=progress, cuda_graph=method == "cuda",
                lpc=padded_lpc,
            )
            q = [out[b, : lengths[b]] for b in range(B)]
        # with linear prediction the loops return the signal itself, else mu-law values
        signals = [x.to(self.device) if lpc is not None else mu_law_decode(x.to(self.device), Q) for x in q]
        a = self.config.decoder.pre_emphasis  # the WaveNet generated y_t = x_t - a x_{t-1}
        return [de_emphasis(x, a).clamp(-1, 1)[None] for x in signals]

    def decode_temperature(self, temperature: float | None = None) -> float:
        """The sampling temperature decoding uses: ``temperature``, or the checkpoint's
        ``config.decoder.temperature`` when it is None.

        Args:
            temperature: a softmax temperature of the mu-law output, or None.

        Returns:
            the temperature, a float >= 0 (0: the most likely sample).

        Raises:
            ValueError: a temperature that is negative or not finite.
        """
        t = self.config.decoder.temperature if temperature is None else float(temperature)
        if not (t >= 0 and math.isfinite(t)):
            raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
        return t

    def resolve_decode_method(self, method: str) -> str:
        """The decoding method ``method`` stands for on this model's device (see :meth:`decode`).

        Raises:
            ValueError: an unknown method, ``"cuda"`` for a model not on a CUDA device, or
                ``"numba"`` without numba installed.
        """
        if method not in DECODE_METHODS:
            raise ValueError(f"unknown decode method {method!r}; choose one of {', '.join(DECODE_METHODS)}")
        from vqaudio.nn.fast_wavenet import numba_available

        on_cuda = self.device.type == "cuda"
        if method == "auto":
            return "cuda" if on_cuda else ("numba" if numba_available() else "torch")
        if method == "cuda" and not on_cuda:
            raise ValueError("decode method 'cuda' needs the model on a CUDA device (model.to('cuda'))")
        if method == "numba" and not numba_available():
            raise ValueError("decode method 'numba' needs numba (pip install numba)")
        return method

    def speaker_tensor(self, speaker: torch.Tensor | int | str | list, batch_size: int) -> torch.Tensor:
        """Normalise ``speaker`` (ids, names, or one of either) to a [batch_size] int64 tensor.

        Raises:
            UnknownSpeakerError: a name not in the table.
            ValueError: the number of speakers does not match ``batch_size``.
        """
        if isinstance(speaker, torch.Tensor):
            ids = speaker.reshape(-1).long()
        else:
            items = speaker if isinstance(speaker, (list, tuple)) else [speaker]
            ids = torch.tensor([self.speaker_id(s) if isinstance(s, str) else int(s) for s in items])
        if ids.numel() == 1 and batch_size > 1:
            ids = ids.expand(batch_size)
        if ids.numel() != batch_size:
            raise ValueError(f"{ids.numel()} speakers given for a batch of {batch_size}")
        return ids.to(self.device)

    # ----- checkpoints --------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``speakers.json`` into ``path``.

        Each file is written to a temporary name and renamed, so an interrupted save never
        leaves a truncated file. Returns the directory.
        """
        path = write_model_files(path, "vqvae", self.config, self.state_dict(), self.speakers)
        self._checkpoint_id = file_sha256(path / WEIGHTS_NAME)[:16]
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "VQVAE":
        """Load a checkpoint directory, or a bundled checkpoint by name (``"fsdd-8k"``).

        A training run directory is accepted too: its ``model/`` folder is loaded.

        Returns:
            the model in eval mode on ``map_location``.

        Raises:
            CheckpointError: the directory is missing, incomplete, or not a VQ-VAE checkpoint.
        """
        path = resolve_checkpoint(path)
        files = read_model_files(path, "vqvae", VQVAEConfig, map_location)
        model = cls(files.config, files.speakers)
        missing, unexpected = model.load_state_dict(files.state, strict=False)
        if missing or unexpected:
            raise CheckpointError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        model._checkpoint_id = file_sha256(path / WEIGHTS_NAME)[:16]
        return model.to(map_location).eval()


def time_jitter(z_q: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Time-jitter regularization (Chorowski et al. 2019, IEEE TASLP): each frame is replaced,
    with probability ``p`` and independently of the others, by its left or right neighbour
    (equal chances; at either end, by the one neighbour it has), taken from the input
    sequence. Gradients flow to the frames that were copied.

    Args:
        z_q: [B, D, T'] code vectors (any float dtype), one per frame.
        p: replacement probability in [0, 1].
        generator: random generator on ``z_q``'s device (default: the global one).

    Returns:
        [B, D, T'], same dtype and device; ``z_q`` itself when T' < 2 or ``p`` is 0.

    Raises:
        ValueError: ``z_q`` is not 3-D or ``p`` is outside [0, 1].
    """
    if z_q.dim() != 3:
        raise ValueError(f"expected z_q of shape [B, D, T'], got {tuple(z_q.shape)}")
    if not 0 <= p <= 1:
        raise ValueError(f"time jitter p must be in [0, 1], got {p}")
    B, D, T = z_q.shape
    if T < 2 or p == 0:
        return z_q
    u = torch.rand(B, T, generator=generator, device=z_q.device)
    side = torch.rand(B, T, generator=generator, device=z_q.device) < 0.5
    shift = torch.where(u < p, torch.where(side, -1, 1), 0)
    t = torch.arange(T, device=z_q.device)
    index = t + shift
    index = torch.where((index < 0) | (index >= T), t - shift, index)  # the one neighbour at the ends
    return z_q.gather(2, index[:, None, :].expand(B, D, T))


def gain_jitter(wav: torch.Tensor, db: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each item by its own gain drawn uniformly in ``[-db, +db]`` dB, capped so that
    its peak stays within full scale (``encoder.gain_jitter_db``).

    Args:
        wav: [B, 1, T] float in [-1, 1]; db: >= 0; generator: on ``wav``'s device.

    Returns:
        [B, 1, T], same dtype, in [-1, 1].
    """
    gain_db = (torch.rand(wav.shape[0], 1, 1, generator=generator, device=wav.device) * 2 - 1) * db
    peak = wav.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    gain = torch.minimum(10 ** (gain_db / 20), 1 / peak)
    return wav * gain.to(wav.dtype)


def _draw_noise(rows: int, samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """[rows, samples] float32 uniform(0, 1) sampling noise, drawn on the generator's device."""
    device = generator.device if generator is not None else "cpu"
    return torch.rand(rows, samples, generator=generator, device=device)


def item_noise(seed: int, key: str, samples: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """[samples] float32 uniform(0, 1) sampling noise of one item, a function of ``(seed,
    key)`` alone (a generator seeded from their SHA-256), so that an item decodes to the same
    audio whichever other items share its batch, come before it, or were done by an earlier,
    interrupted run. Used by ``detokenize`` and ``evaluate`` with the item's path or id."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    generator = torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.rand(samples, generator=generator, device=device)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """Turn a checkpoint argument into a directory holding ``config.json``.

    Accepts a checkpoint directory, a training run directory (uses its ``model/``), or the
    name of a checkpoint bundled in :data:`PRETRAINED_DIR`.

    Raises:
        CheckpointError: nothing loadable there; the message lists bundled names.
    """
    p = Path(path)
    for candidate in (p, p / "model", PRETRAINED_DIR / str(path)):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    bundled = sorted(d.name for d in PRETRAINED_DIR.iterdir() if (d / CONFIG_NAME).is_file()) if PRETRAINED_DIR.is_dir() else []
    hint = f"; bundled checkpoints: {', '.join(bundled)}" if bundled else ""
    if p.exists():
        raise CheckpointError(f"{p}: not a checkpoint directory (no {CONFIG_NAME}){hint}")
    raise CheckpointError(f"{p}: no such checkpoint directory{hint}")
