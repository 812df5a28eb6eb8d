"""Frozen configuration dataclasses, one per model, saved inside every checkpoint.

A checkpoint directory holds ``config.json`` (``{"format_version": ..., "model_type": ...,
"config": asdict(cfg)}``) next to ``model.safetensors``, so the model can be rebuilt with no
other information (as nanoGPT stores ``model_args`` in its checkpoint).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

#: Version of the on-disk checkpoint layout; bump on incompatible changes.
CHECKPOINT_FORMAT_VERSION = 1

#: WaveNet decoding implementations (:meth:`vqaudio.model.VQVAE.decode`): ``"auto"`` picks the
#: fastest available (``"cuda"`` on a GPU, else the compiled ``"numba"`` loop, else ``"torch"``).
DECODE_METHODS = ("auto", "numba", "torch", "cuda")

T = TypeVar("T")


@dataclass(frozen=True)
class EncoderConfig:
    """Strided 1-D convolutional encoder (van den Oord et al. 2017, Sec. 4.3).

    ``len(channels)`` Conv1d layers of ``kernel_size`` and ``stride`` each divide time by
    ``stride``; with the defaults (6 layers, stride 2) one latent covers 64 samples.
    Widths grow as time shrinks so that the layers at the sample rate stay cheap.

    Attributes:
        channels: widths of the strided layers (their number sets the hop, ``stride ** n``).
        kernel_size, stride: of every strided layer.
        causal: pad each layer's input on the left only (``kernel_size - stride`` zeros)
            instead of on both sides, so that the code of frame n depends on no sample after
            the frame's own hop (``n * hop_length + hop_length - 1``): a streaming encoder that
            can emit each code as soon as its hop of audio has arrived. Default False (the
            paper's centred padding).
        gain_jitter_db: in training only, each segment the encoder sees is scaled by a gain
            drawn uniformly in +-``gain_jitter_db`` dB (capped so that its peak stays within
            full scale), while the decoder's targets keep the recording's level. The level of
            the encoder's input then says nothing about the level the decoder must produce, so
            the codes need not carry it and the decoder takes the level from the speaker (and
            its own past samples): a conversion comes out at the target speaker's level rather
            than the source's. No weights, encoding unchanged. 0: off.
    """

    channels: tuple[int, ...] = (32, 64, 128, 128, 256, 256)
    kernel_size: int = 4
    stride: int = 2
    causal: bool = False
    gain_jitter_db: float = 0.0

    @property
    def hop_length(self) -> int:
        """Samples per latent frame: ``stride ** len(channels)`` (64 by default)."""
        return self.stride ** len(self.channels)


@dataclass(frozen=True)
class QuantizerConfig:
    """Vector quantizer with a learned codebook (van den Oord et al. 2017, Sec. 3.1-3.2).

    Attributes:
        codebook_size: K, the number of codes.
        dim: D, the size of each code vector (and of the encoder's latents).
        commitment_cost: beta in Eq. 3, weight of ``||z_e - sg[e]||^2``.
        ema: update the codebook by exponential moving averages (Appendix A.1) instead of
            the codebook loss ``||sg[z_e] - e||^2``.
        decay: EMA decay gamma.
        epsilon: Laplace smoothing of the EMA cluster sizes.
        dead_code_threshold: a code whose EMA cluster size (expected assignments per batch)
            falls below this is restarted from a recent encoder output; 0 disables restarts.
            1.0 (as in Dhariwal et al. 2020, Jukebox) keeps the codebook on the latents while the
            encoder's output distribution moves early in training: on FSDD with 0.1, one code
            took every latent for the first 80 steps; with 1.0, 67 codes were in use by step 80.
    """

    codebook_size: int = 512
    dim: int = 64
    commitment_cost: float = 0.25
    ema: bool = True
    decay: float = 0.99
    epsilon: float = 1e-5
    dead_code_threshold: float = 1.0

    @property
    def bits_per_code(self) -> float:
        """log2(K): bits carried by one code."""
        return math.log2(self.codebook_size)


@dataclass(frozen=True)
class DecoderConfig:
    """WaveNet decoder (van den Oord et al. 2016; Paine et al. 2016 for fast generation).

    Attributes:
        num_stacks: repetitions of the dilation cycle ``1, 2, ..., 2 ** (layers_per_stack - 1)``.
        layers_per_stack: dilated layers in one cycle (10 gives dilations 1..512).
        residual_channels: width of the residual path.
        gate_channels: output width of each dilated conv, split in halves for tanh and sigmoid.
        skip_channels: width of the skip path and of the output head.
        kernel_size: taps of each causal dilated conv.
        quantization_channels: size of the softmax over mu-law values (256).
        local_channels: width of the local conditioning (the quantized latents, D).
        speaker_channels: width of the global speaker embedding; 0 disables it.
        num_speakers: rows of the speaker embedding table.
        condition_layers: residual blocks over the code frames before the WaveNet sees them
            (each ReLU, Conv1d D -> ``condition_channels`` with kernel 3 across frames, ReLU,
            1x1 Conv1d back to D, added to its input; the last conv starts at zero, so a new
            stack starts as the identity). They let a code's vector depend on its neighbours
            (+-1 frame per block), like the conditioning networks of later vocoders. 0: none.
        condition_channels: hidden width of those blocks.
        mel_loss_weight: weight of an auxiliary loss (0: none): the L1 distance between the
            log-mel spectrogram of the input (``mel_bands`` bands, one frame per code: window
            4 hops, hop 1 hop) and its prediction by a 1x1 conv from each frame's
            conditioning (code features and speaker embedding). A dense, per-frame target that
            asks the conditioning to carry the spectrum directly, where the WaveNet's
            cross-entropy reaches it only through the sample-level autoregression.
        mel_bands: bands of that log-mel spectrogram.
        time_jitter: probability that, in training only, each code frame the decoder sees is
            replaced by its left or right neighbour (chosen with equal chance; the one
            neighbour at either end), independently per frame (Chorowski et al. 2019,
            "time-jitter regularization", p = 0.12 there). It asks a code to carry what holds
            across neighbouring frames (phonetic content) rather than exact timing; no weights,
            decoding unchanged. 0: off.
        input_noise: standard deviation, in linear amplitude of the [-1, 1] waveform, of
            Gaussian noise added in training only to the decoder's teacher-forced input (the
            past samples, before mu-law encoding; the targets stay clean). Past samples it
            cannot trust make the WaveNet lean on its conditioning (codes and speaker), as
            noise on the input of WaveNet and WaveRNN autoencoders is used for (nsynth_wavenet,
            mkotha/WaveRNN). Mu-law spends most levels near zero, so 0.01 blurs silence by
            tens of levels and speech at amplitude 0.1 by about two. No weights, decoding
            unchanged. 0: off.
        pre_emphasis: coefficient ``a`` of a first-order pre-emphasis (LPCNet, Valin & Skoglund
            2019: 0.85), 0 = off. The WaveNet then models the mu-law values of ``y_t = x_t - a
            x_{t-1}`` (:func:`vqaudio.audio.pre_emphasis`, clipped to [-1, 1]) instead of
            ``x_t``, and decoding de-emphasises what it generates
            (:func:`vqaudio.audio.de_emphasis`), so that the mu-law quantization noise follows
            the speech spectrum's tilt instead of lying flat across the band. The encoder still
            sees ``x``. Its validation bits/sample are those of ``y``: not comparable with a
            model without it.
        lpc_order: P, the order of a linear predictor inside the decoder (LPCNet, Valin &
            Skoglund 2019, Sec. 3; 0 = off; needs ``mel_loss_weight`` > 0). The mel head's
            prediction of each frame's log-mel spectrum (from the codes and the speaker) gives
            the frame's prediction coefficients (:func:`vqaudio.nn.lpc.lpc_from_log_mel`: power
            spectrum, autocorrelation, Levinson-Durbin; not trained through). The prediction
            ``p_t = sum_k a_k s_{t-k}`` from the past samples (the true ones in training, the
            generated ones in decoding; ``s`` is the pre-emphasised signal with
            ``pre_emphasis``) is a second input of the WaveNet (its mu-law value, embedded), and
            the softmax models the excitation ``e_t = s_t - p_t`` in mu-law; decoding outputs
            ``s_t = p_t + e_t``. Costs P multiply-adds per sample in decoding.
        speaker_adversary: weight ``W`` of a speaker adversary on the encoder output (Ganin &
            Lempitsky 2015), 0 = off: a per-frame classifier (Linear D -> 128, ReLU, Linear ->
            num_speakers) predicts the speaker from ``z_e`` through a gradient-reversal layer
            that passes ``-W`` times its gradient back to the encoder, so the classifier learns
            to find the speaker while the encoder learns to leave it out of the codes. Its
            cross-entropy is added to the loss; decoding does not use it.
        temperature: the sampling temperature decoding uses when none is given (the default of
            :meth:`vqaudio.model.VQVAE.decode` and of every command's ``--temperature``): the
            mu-law sample is drawn from ``softmax(logits / temperature)``, 1 samples the model's
            distribution, 0 takes the most likely value. Not used in training; a checkpoint
            sets it to the value that scored best with its weights (an undertrained WaveNet
            decodes less noisily a little below 1, as the conditional sampling of FFTNet,
            Jin et al. 2018, which lowers it in voiced speech). Default 1.
    """

    num_stacks: int = 2
    layers_per_stack: int = 10
    residual_channels: int = 64
    gate_channels: int = 128
    skip_channels: int = 64
    kernel_size: int = 2
    quantization_channels: int = 256
    local_channels: int = 64
    speaker_channels: int = 64
    num_speakers: int = 1
    condition_layers: int = 0
    condition_channels: int = 128
    mel_loss_weight: float = 0.0
    mel_bands: int = 40
    time_jitter: float = 0.0
    input_noise: float = 0.0
    pre_emphasis: float = 0.0
    lpc_order: int = 0
    speaker_adversary: float = 0.0
    temperature: float = 1.0

    @property
    def dilations(self) -> tuple[int, ...]:
        """Dilation of each layer, ``(1, 2, ..., 512) * num_stacks`` by default."""
        return tuple(2**i for i in range(self.layers_per_stack)) * self.num_stacks

    @property
    def receptive_field(self) -> int:
        """Samples of past audio that one output sees, the input sample included.

        ``(kernel_size - 1) * sum(dilations) + 1``; 2047 with the defaults (2 x 1023 + 1).
        """
        return receptive_field(self.kernel_size, self.dilations)


def receptive_field(kernel_size: int, dilations: tuple[int, ...] | list[int]) -> int:
    """Receptive field in samples of a stack of causal dilated convolutions.

    Each layer of ``kernel_size`` taps at dilation ``d`` adds ``(kernel_size - 1) * d`` samples
    of past context. Example: kernel 2, dilations ``1, 2, 4`` -> ``1 + 1 + 2 + 4 = 8``.
    """
    return (kernel_size - 1) * sum(dilations) + 1


@dataclass(frozen=True)
class VQVAEConfig:
    """The VQ-VAE for audio: encoder, quantizer, WaveNet decoder, and the audio rate.

    Attributes:
        sample_rate: model rate in Hz; input audio is resampled to it.
        encoder, quantizer, decoder: the parts' configs. ``quantizer.dim`` must equal
            ``decoder.local_channels``.
    """

    sample_rate: int = 16000
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)

    def __post_init__(self) -> None:
        if self.quantizer.dim != self.decoder.local_channels:
            raise ValueError(
                f"quantizer.dim ({self.quantizer.dim}) must equal decoder.local_channels "
                f"({self.decoder.local_channels})"
            )
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        d = self.decoder
        if d.condition_layers < 0 or d.condition_channels < 1 or d.mel_bands < 1 or not d.mel_loss_weight >= 0:
            raise ValueError(f"decoder: condition_layers must be >= 0, condition_channels and mel_bands >= 1 and "
                             f"mel_loss_weight >= 0, got {d.condition_layers}, {d.condition_channels}, "
                             f"{d.mel_bands}, {d.mel_loss_weight}")
        if not (self.encoder.gain_jitter_db >= 0 and math.isfinite(self.encoder.gain_jitter_db)):
            raise ValueError(f"encoder: gain_jitter_db must be a finite number >= 0, got {self.encoder.gain_jitter_db}")
        if not 0 <= d.time_jitter <= 1:
            raise ValueError(f"decoder: time_jitter must be a probability in [0, 1], got {d.time_jitter}")
        if not (d.input_noise >= 0 and math.isfinite(d.input_noise)):
            raise ValueError(f"decoder: input_noise must be a finite number >= 0, got {d.input_noise}")
        if not 0 <= d.pre_emphasis < 1:
            raise ValueError(f"decoder: pre_emphasis must be in [0, 1), got {d.pre_emphasis}")
        if d.lpc_order < 0 or (d.lpc_order > 0 and not d.mel_loss_weight > 0):
            raise ValueError(f"decoder: lpc_order must be >= 0, and > 0 only with mel_loss_weight > 0 (the mel head "
                             f"predicts the envelope the coefficients come from), got {d.lpc_order} with "
                             f"mel_loss_weight {d.mel_loss_weight}")
        if not (d.speaker_adversary >= 0 and math.isfinite(d.speaker_adversary)):
            raise ValueError(f"decoder: speaker_adversary must be a finite number >= 0, got {d.speaker_adversary}")
        if not (d.temperature >= 0 and math.isfinite(d.temperature)):
            raise ValueError(f"decoder: temperature must be a finite number >= 0, got {d.temperature}")

    @property
    def hop_length(self) -> int:
        """Samples per code (64 by default)."""
        return self.encoder.hop_length

    @property
    def codes_per_second(self) -> float:
        """Code frame rate in Hz: ``sample_rate / hop_length`` (250 at 16 kHz)."""
        return self.sample_rate / self.hop_length

    @property
    def bitrate(self) -> float:
        """Bits per second of the code stream: ``codes_per_second * log2(K)``."""
        return self.codes_per_second * self.quantizer.bits_per_code


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A frozen config dataclass as a JSON-ready dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a (possibly nested) frozen config dataclass from :func:`config_to_dict` output.

    Raises:
        ValueError: ``data`` has keys that ``cls`` does not know (a checkpoint from a newer
            version, or a typo in a hand-written config).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    kwargs: dict[str, Any] = {}
    hints = {name: f.type for name, f in fields.items()}
    for name, value in data.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub is not None and isinstance(value, dict):
            value = config_from_dict(sub, value)
        elif isinstance(value, list) and "tuple" in str(hints[name]):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


_NESTED: dict[tuple[str, str], type] = {
    ("VQVAEConfig", "encoder"): EncoderConfig,
    ("VQVAEConfig", "quantizer"): QuantizerConfig,
    ("VQVAEConfig", "decoder"): DecoderConfig,
}
